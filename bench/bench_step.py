"""GPU benchmark of the Revela step and of in-batch attention, on random-init models of the real shapes (no weights).

    python bench/bench_step.py --out results/step_gpu.json             # all tables on the visible GPU
    python bench/bench_step.py --tables attention --batch 16 64 128    # one table
    python bench/bench_step.py --plot results/step_gpu.json            # PNG of groups/s from a saved run (any machine)
    python bench/bench_step.py --smoke                                 # tiny shapes on CPU: the script itself works

Agreement table: the fused kernels against the fp64 oracle (values and gradients) at training shapes.
Step table: one optimizer step of the Revela objective (two retriever views in one forward, LM pass 2 + pass 3,
backward, fused AdamW, bf16 autocast over fp32 master weights, LoRA r=256 on retriever and LM) next to a plain NTP
step of the same LoRA LM on the same G*B*L tokens. Attention table: one layer's in-batch attention forward +
backward (bf16, H=14, Hkv=2, d=64 as Qwen2.5-0.5B) for the fused kernel, the blockwise torch path, the reference
math that materialises [B, B, H, L, L], and a floor (one SDPA per chunk over all B*L keys of its group).
Times are medians of timed repetitions after warm-up, with a device sync around each; peak memory is
max_memory_allocated above what the inputs hold. Every row is printed as JSON as soon as it is measured (and `--out`
is rewritten after each row, so a run cut short keeps what it measured).

Each model reads token ids from its own vocabulary (the retriever's for the retriever, the LM's for the LM), as
two tokenizers would give them. A row that fails records its error and the run goes on. An error that leaves the
CUDA context unusable (a device-side assert, an illegal memory access) marks every later row of this process
"not run" with the error that caused it: run tables (or LMs, `--lm`) in separate processes to keep them apart, as
bench/gpu_session.sh does.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT / "tests")]  # runs from a bare checkout (no install needed)

# Architecture hyperparameters of the published checkpoints (config.json of each), without their weights.
SHAPES = {
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                   rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=8192)),
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                   rope_theta=1000000.0, tie_word_embeddings=True, max_position_embeddings=32768)),
    "llama-3.2-1b": ("llama", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                   num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                   rope_theta=500000.0, tie_word_embeddings=True, max_position_embeddings=131072)),
    "tiny": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=True)),
    # an LM with a larger vocabulary than the tiny retriever's, as Qwen2.5 / Llama-3.2 next to SmolLM2
    "tiny-wide-vocab": ("qwen2", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=1, vocab_size=3000,
                                      tie_word_embeddings=True)),
}

# (retriever, LM, B, G values). SmolLM2 pair: the rows measured on an H200 (issue 17) that fit its 141 GB (B=16 G=16
# ran out of memory there; B=64 G=4 and B=128 G=2 would need twice the 104/107 GiB measured at half their chunks).
# Qwen2.5-0.5B and Llama-3.2-1B LMs: unmeasured; G up to where the chunks per forward of the SmolLM2 rows stop.
STEP_CASES = [
    ("smollm2-135m", "smollm2-135m", 16, (1, 4, 8)),
    ("smollm2-135m", "smollm2-135m", 64, (1, 2)),
    ("smollm2-135m", "smollm2-135m", 128, (1,)),
    ("smollm2-135m", "qwen2.5-0.5b", 16, (1, 4)),
    ("smollm2-135m", "llama-3.2-1b", 16, (1, 2, 4)),
]
SMOKE_CASES = [("tiny", "tiny", 4, (1, 2)), ("tiny", "tiny-wide-vocab", 4, (1,))]


def config_of(shape: str):
    from transformers import LlamaConfig, Qwen2Config

    family, kwargs = SHAPES[shape]
    return {"llama": LlamaConfig, "qwen2": Qwen2Config}[family](**kwargs)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_reset(device) -> int:
    gc.collect()
    if device.type != "cuda":
        return 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_gib(device, base: int) -> float | None:
    return (torch.cuda.max_memory_allocated(device) - base) / 2**30 if device.type == "cuda" else None


LOST_CONTEXT: list[str] = []
"""The error that left this process's CUDA context unusable, once one did."""


def device_usable(device) -> bool:
    if device.type != "cuda":
        return True
    try:
        torch.ones(1, device=device).add_(1).item()
        torch.cuda.synchronize(device)
        return True
    except Exception:  # a sticky CUDA error: every later call on this context fails the same way
        return False


def measured(row: dict, measure, device) -> dict:
    """`row` filled in by `measure(row)`, or with the error it raised (the run goes on). After an error that left the
    CUDA context unusable, later rows are not attempted: they record that error instead."""
    if LOST_CONTEXT:
        row["error"] = f"not run: the CUDA context was lost at an earlier row ({LOST_CONTEXT[0]})"
        return row
    try:
        measure(row)
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as e:  # noqa: BLE001 (any failure is recorded in its row)
        message = str(e).strip().splitlines()
        row["error"] = f"{type(e).__name__}: {message[0] if message else ''}"[:300]
        if not device_usable(device):
            LOST_CONTEXT.append(f"{row['table']} row {json.dumps({k: row[k] for k in row if k in KEYS})}: "
                                f"{row['error']}")
    finally:
        peak_reset(device)
    return row


KEYS = ("impl", "retriever", "lm", "B", "G", "dtype")
"""What names a row in messages."""


def timed(fn, device, reps: int, warmup: int) -> float:
    """Median milliseconds of `fn` over `reps` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------- step table

def random_groups(G: int, B: int, L: int, retriever_vocab: int, lm_vocab: int, device, seed: int = 0) -> dict:
    """G groups of B chunks with a quarter of them ending in padding: the retriever's views in ids of its vocabulary,
    the LM's input in ids of the LM's (two tokenizers; an id past a model's vocabulary is a CUDA device-side assert)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, retriever_vocab, (G, B, L), generator=g)
    lm_ids = torch.randint(3, lm_vocab, (G, B, L), generator=g)
    mask = torch.ones(G, B, L, dtype=torch.long)
    lengths = torch.randint(L // 2, L, (G, B), generator=g)
    short = torch.rand(G, B, generator=g) < 0.25
    mask[short[..., None] & (torch.arange(L) >= lengths[..., None])] = 0
    half = mask.clone()
    half[..., L // 2:] = 0
    batch = {"query_input_ids": ids, "query_attention_mask": half, "passage_input_ids": ids,
             "passage_attention_mask": mask, "lm_input_ids": lm_ids, "lm_attention_mask": mask}
    return {k: v.to(device) for k, v in batch.items()} | {"is_code": torch.zeros(G, dtype=torch.long)}


def build_revela(retriever: str, lm: str, L: int, device, lora_r: int, backend: str):
    from transformers import AutoModel, AutoModelForCausalLM

    from revela.config import ModelConfig
    from revela.model import RevelaModel

    lora = {"r": lora_r, "alpha": 64, "dropout": 0.1}
    cfg = ModelConfig.model_validate({
        "retriever": {"name": retriever, "pooling": "eos", "max_length": L, "finetune": "lora", "lora": lora},
        "lm": {"name": lm, "finetune": "lora", "max_length": L, "lora": lora},
        "objective": {"temperature": 1e-4, "inbatch_backend": backend}})
    with device:  # initialise on the device: random init of a 1B model on the CPU takes minutes
        backbone = AutoModel.from_config(config_of(retriever), dtype=torch.float32)
        lm_model = AutoModelForCausalLM.from_config(config_of(lm), dtype=torch.float32)
    return RevelaModel.from_config(cfg, lm_model=lm_model, retriever_backbone=backbone,
                                   tokenizers=(None, None)).to(device)


def step_rows(retriever: str, lm: str, B: int, groups: tuple[int, ...], L: int, device, reps: int, warmup: int,
              lora_r: int, backend: str):
    from revela.config import TrainConfig
    from revela.model import group_lm_loss
    from revela.train.loop import Trainer

    def measure(row):
        G = row["G"]
        base = peak_reset(device)
        try:
            model = build_revela(retriever, lm, L, device, lora_r, backend)
            trainer = Trainer(model, TrainConfig(max_steps=10**6, warmup_steps=0, precision="auto"), device)
            batch = random_groups(G, B, L, config_of(retriever).vocab_size, model.lm.config.vocab_size, device)
            ms = timed(lambda: trainer.train_step([batch], measure=False), device, reps, warmup)
            row.update(revela_ms=ms, revela_peak_gib=peak_gib(device, base))
            trainer.check_finite()

            # the plain NTP step: same LoRA LM, same tokens, same optimizer and precision
            lm_model = model.lm
            params = [p for p in lm_model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda" or None)
            ids = batch["lm_input_ids"].flatten(0, 1)
            mask = batch["lm_attention_mask"].flatten(0, 1)

            def plain_step():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    logits = lm_model(input_ids=ids, attention_mask=mask).logits
                    loss = group_lm_loss(logits, ids, mask).mean()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            del trainer
            base = peak_reset(device)
            ms_plain = timed(plain_step, device, reps, warmup)
            tokens = int(mask.sum())
            row.update(plain_ms=ms_plain, plain_peak_gib=peak_gib(device, base),
                       ratio=row["revela_ms"] / ms_plain, groups_per_s=G / (row["revela_ms"] / 1000),
                       tokens_per_s=tokens / (row["revela_ms"] / 1000))
        finally:
            model = trainer = optimizer = lm_model = batch = None  # noqa: F841 (free before the next case)

    for G in groups:
        row = {"table": "step", "retriever": retriever, "lm": lm, "B": B, "G": G, "L": L, "device": device_name(device)}
        yield measured(row, measure, device)


# ---------------------------------------------------------------------------------------------- attention table

def attention_rows(batches, device, dtype, reps: int, warmup: int, H=14, Hkv=2, L=160, d=64):
    import torch.nn.functional as F

    from oracle import plain_inbatch_attention
    from revela.attention import inbatch_attention

    def floor(q, k, v, w, mask):  # every chunk attends to all B*L keys of its group in one SDPA
        B = q.shape[0]
        keys = k.transpose(0, 1).reshape(1, Hkv, B * L, d).expand(B, -1, -1, -1)
        values = v.transpose(0, 1).reshape(1, Hkv, B * L, d).expand(B, -1, -1, -1)
        return F.scaled_dot_product_attention(q, keys, values, enable_gqa=True)

    impls = {
        "fused": lambda *a: inbatch_attention(*a, backend="triton"),  # default kernels ($REVELA_INBATCH_KERNEL)
        "fused_packed": lambda *a: fused_variant("packed", *a),
        "fused_split": lambda *a: fused_variant("split", *a),
        "blockwise": lambda *a: inbatch_attention(*a, backend="torch"),
        "reference": lambda q, k, v, w, mask: plain_inbatch_attention(q, k, v, w, mask),
        "floor": floor,
    }
    if device.type != "cuda":
        for name in ("fused", "fused_packed", "fused_split"):
            impls.pop(name)  # the interpreter on CPU is a correctness tool, not something to time
    for B in batches:
        g = torch.Generator(device=device).manual_seed(0)
        for name, fn in impls.items():
            def measure(row, fn=fn, B=B, g=g):
                q = torch.randn(B, H, L, d, device=device, dtype=dtype, generator=g).requires_grad_(True)
                k = torch.randn(B, Hkv, L, d, device=device, dtype=dtype, generator=g).requires_grad_(True)
                v = torch.randn(B, Hkv, L, d, device=device, dtype=dtype, generator=g).requires_grad_(True)
                w = torch.randn(B, B, device=device, generator=g).softmax(-1).requires_grad_(True)
                mask = torch.ones(B, L, dtype=torch.bool, device=device)
                mask[:, L - L // 4:] = torch.rand(B, L // 4, device=device, generator=g) > 0.5
                base = peak_reset(device)

                def run():
                    out = fn(q, k, v, w, mask)
                    out.float().square().mean().backward()
                    q.grad = k.grad = v.grad = w.grad = None

                try:
                    row["ms"] = timed(run, device, reps, warmup)
                    row["peak_gib"] = peak_gib(device, base)
                finally:
                    q = k = v = w = mask = None  # noqa: F841

            row = {"table": "attention", "impl": name, "B": B, "H": H, "Hkv": Hkv, "L": L, "d": d,
                   "dtype": str(dtype).removeprefix("torch."), "device": device_name(device)}
            yield measured(row, measure, device)


def fused_variant(variant: str, *args):
    """The fused attention with one kernel variant (revela.attention_triton.kernel_variant); backward follows it."""
    from revela.attention import inbatch_attention
    from revela.attention_triton import kernel_variant

    with kernel_variant(variant):
        return inbatch_attention(*args, backend="triton")


# ---------------------------------------------------------------------------------------------- agreement

def agreement_rows(device, smoke: bool):
    """The fused kernels against the fp64 oracle at training shapes: relative error of values and gradients. The
    last case is what the LM hands in under autocast: fp32 queries and keys (rotary embedding) with half-precision
    values, computed in the autocast dtype."""
    from oracle import plain_inbatch_attention

    # Triton 3.9's interpreter multiplies bf16 tiles wrongly, so the CPU smoke checks the 16-bit path in fp16
    half = torch.float16 if smoke else torch.bfloat16
    shapes = [(1, 4, 4, 2, 19, 16)] if smoke else [(1, 16, 14, 2, 160, 64), (2, 16, 9, 3, 157, 64),
                                                    (1, 8, 4, 1, 96, 256)]
    plain = [torch.float32] if smoke else [half, torch.float32]
    cases = [(shape, (t, t, t), None) for shape in shapes for t in plain]
    cases.append((shapes[0], (torch.float32, torch.float32, half), half))
    for ((G, B, H, Hkv, L, d), dtypes, autocast), variant in itertools.product(cases, ("packed", "split")):
        def measure(row, G=G, B=B, H=H, Hkv=Hkv, L=L, d=d, dtypes=dtypes, autocast=autocast, variant=variant):
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(G * B, h, L, d, generator=g).to(device, t).requires_grad_(True)
                       for h, t in zip((H, Hkv, Hkv), dtypes))
            w = torch.randn(G, B, B, generator=g).softmax(-1).to(device).requires_grad_(True)
            lengths = torch.randint(L // 2, L + 1, (G * B,), generator=g)
            mask = (torch.arange(L)[None] < lengths[:, None]).to(device)
            flags = torch.tensor([n % 2 == 0 for n in range(G)])
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                out = fused_variant(variant, q, k, v, w, mask, flags.to(device) if G > 1 else True)
            ref = torch.cat([plain_inbatch_attention(q[n * B:(n + 1) * B].double(), k[n * B:(n + 1) * B].double(),
                                                     v[n * B:(n + 1) * B].double(), w[n].double(),
                                                     mask[n * B:(n + 1) * B], v_norm=bool(flags[n]) or G == 1)
                             for n in range(G)])
            go = torch.randn(ref.shape, generator=g).to(device)
            got = torch.autograd.grad((out.double() * go).sum(), (q, k, v, w))
            exp = torch.autograd.grad((ref * go).sum(), (q, k, v, w))
            row["out_dtype"] = str(out.dtype).removeprefix("torch.")
            row["out"] = float((out.detach().double() - ref.detach()).norm() / ref.detach().norm())
            row.update({f"grad_{n}": float((a.double() - b).norm() / b.norm()) for n, a, b in zip("qkvw", got, exp)})

        names = [str(t).removeprefix("torch.") for t in dtypes]
        label = names[0] if len(set(names)) == 1 else "/".join(names)
        if autocast is not None:
            label += f" autocast {str(autocast).removeprefix('torch.')}"
        row = {"table": "agreement", "variant": variant, "G": G, "B": B, "H": H, "Hkv": Hkv, "L": L, "d": d,
               "dtype": label, "device": device_name(device)}
        yield measured(row, measure, device)


# ---------------------------------------------------------------------------------------------- output

def device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def markdown(rows: list[dict]) -> str:
    lines = []
    agreement = [r for r in rows if r["table"] == "agreement"]
    if agreement:
        lines += ["| kernels | G | B | H/Hkv | L | d | dtype | out | grad q | grad k | grad v | grad w |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in agreement:
            errs = " | ".join("–" if key not in r else f"{r[key]:.1e}"
                              for key in ("out", "grad_q", "grad_k", "grad_v", "grad_w"))
            lines.append(f"| {r.get('variant', 'split')} | {r['G']} | {r['B']} | {r['H']}/{r['Hkv']} | {r['L']} | "
                         f"{r['d']} | {r['dtype']} | {errs} |" + (f" {r['error']}" if "error" in r else ""))
        lines.append("")
    attention = [r for r in rows if r["table"] == "attention"]
    if attention:
        floors = {r["B"]: r for r in attention if r["impl"] == "floor" and "ms" in r}
        lines += ["| impl | B | fwd+bwd ms | peak GiB | time / floor | memory / floor |", "|---|---|---|---|---|---|"]
        for r in attention:
            f = floors.get(r["B"])
            cells = [r["impl"], r["B"], _fmt(r.get("ms")), _fmt(r.get("peak_gib")),
                     _fmt(r["ms"] / f["ms"] if f and "ms" in r else None),
                     _fmt(r["peak_gib"] / f["peak_gib"] if f and r.get("peak_gib") and f.get("peak_gib") else None)]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |" + (f" {r['error']}" if "error" in r else ""))
        lines.append("")
    steps = [r for r in rows if r["table"] == "step"]
    if steps:
        lines += ["| retriever | LM | B | G | Revela step ms | plain step ms | ratio | groups/s | tokens/s | "
                  "Revela peak GiB |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in steps:
            cells = [r["retriever"], r["lm"], r["B"], r["G"], _fmt(r.get("revela_ms")), _fmt(r.get("plain_ms")),
                     _fmt(r.get("ratio")), _fmt(r.get("groups_per_s")), _fmt(r.get("tokens_per_s"), 0),
                     _fmt(r.get("revela_peak_gib"))]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |" + (f" {r['error']}" if "error" in r else ""))
    return "\n".join(lines)


def _fmt(x, digits: int = 2):
    return "–" if x is None else f"{x:.{digits}f}"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in rows if r["table"] == "step" and "groups_per_s" in r]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted({(r["retriever"], r["lm"], r["B"]) for r in steps}):
        pts = sorted((r["G"], r["groups_per_s"]) for r in steps if (r["retriever"], r["lm"], r["B"]) == key)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{key[0]} + {key[1]}, B={key[2]}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("groups per forward (G)")
    ax.set_ylabel("groups / s (one optimizer step per forward)")
    ax.set_title(f"Revela step throughput ({steps[0]['device'] if steps else ''})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", nargs="+", choices=["agreement", "attention", "step"],
                        default=["agreement", "attention", "step"])
    parser.add_argument("--batch", nargs="+", type=int, default=[16, 64, 128], help="B for the attention table")
    parser.add_argument("--L", type=int, default=160)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--lora-r", type=int, default=256)
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"],
                        help="in-batch attention inside the step")
    parser.add_argument("--lm", nargs="+", choices=sorted({case[1] for case in STEP_CASES + SMOKE_CASES}),
                        help="only the step rows with these LMs (default: all)")
    parser.add_argument("--out", type=Path, help="write all rows as JSON, after every row (and a PNG of the step "
                                                 "table beside it at the end)")
    parser.add_argument("--plot", type=Path, metavar="JSON", help="only draw the PNG of a saved run")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, 1 rep: checks the script")
    args = parser.parse_args()
    if args.plot:
        rows = json.loads(args.plot.read_text())["rows"]
        plot(rows, args.plot.with_suffix(".png"))
        print(markdown(rows))
        return
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    cases, batches, L = STEP_CASES, args.batch, args.L
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # kernels run on the CPU in Triton's interpreter
        cases, batches, L = SMOKE_CASES, [4], 16
        args.reps, args.warmup, args.lora_r = 1, 1, 4
    if args.lm:
        cases = [case for case in cases if case[1] in args.lm]
    rows = []

    def record(row):
        print(json.dumps(row), flush=True)
        rows.append(row)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"argv": sys.argv[1:], "torch": torch.__version__, "rows": rows}, indent=1))

    if "agreement" in args.tables:
        for row in agreement_rows(device, args.smoke):
            record(row)
    if "attention" in args.tables:  # bf16 on the CPU too: only the fused kernels need a GPU for it
        for row in attention_rows(batches, device, torch.bfloat16, args.reps, args.warmup, L=L,
                                  d=16 if args.smoke else 64):
            record(row)
    if "step" in args.tables:
        for retriever, lm, B, groups in cases:
            for row in step_rows(retriever, lm, B, groups, L, device, args.reps, args.warmup, args.lora_r,
                                 args.backend):
                record(row)
    print(markdown(rows))
    if args.out and any(r["table"] == "step" and "groups_per_s" in r for r in rows):
        plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
