"""Memory of a Revela step per group, by part of the step, with the memory levers on and off (issue 17).

    python bench/profile_step.py --out bench/profile_cpu.json                 # fp32 on the CPU, all levers
    python bench/profile_step.py --precision bf16 --levers baseline all --out bench/profile_cpu_bf16.json
    python bench/profile_step.py --plot bench/profile_cpu.json                # redraw the PNG and print the tables
    python bench/profile_step.py --smoke                                      # tiny shapes: the script works

Models: SmolLM2-135M retriever and LM, random-init from the real config (.cache/models/smollm2-135m/config.json,
or --config), LoRA r=256 (alpha 64, dropout 0.1, all linear layers) on both, B=16 chunks of L=160 tokens, a
quarter of them ending in padding. One forward (pass 2 unmeasured, as on unlogged steps) and one backward.

What it measures, for each lever set, each G (groups per forward) and each depth n (both models cut to n layers,
everything else at the real shapes):
  - saved: the bytes autograd holds at the end of the forward, by category (revela.step_memory.SavedMemory:
    retriever, LM pass 2, captured keys/values, in-batch attention, LM pass 3, logits + CE) and by holder;
  - live: the allocator's bytes at the end of the forward, peak: its largest value during forward + backward
    (CPU: torch's profiler; CUDA: torch.cuda memory stats), both above what was allocated before the step.
Every layer of a model is the same module, so each quantity is a + b*n exactly: n = 1, 2 give the fit, n = 3
checks it (`check` in the JSON), and the tables extrapolate to the models' real depth. Per group = G=2 minus G=1.
Rows are printed as JSON as they are measured; `--out` writes them with the fits, and a PNG beside the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform")]  # runs from a bare checkout (no install needed)

from bench_step import random_groups  # noqa: E402 (same folder; the step table's batches)

GIB = 2**30
# Memory levers: ModelConfig overrides on top of the step's config (see docs/performance.md).
LEVERS = {
    "baseline": {},
    "chunked_ce": {"lm": {"loss_chunk_tokens": 1024}},
    "ckpt_pass3": {"lm": {"gradient_checkpointing": "pass3"}},
    "ckpt_pass2": {"lm": {"gradient_checkpointing": "pass2"}},
    "ckpt_retriever": {"retriever": {"gradient_checkpointing": True}},
    "ckpt_lm": {"lm": {"gradient_checkpointing": True}},
    "all": {"lm": {"loss_chunk_tokens": 1024, "gradient_checkpointing": True},
            "retriever": {"gradient_checkpointing": True}},
    "compiled_retriever": {"retriever": {"compile": True}},
}
CATEGORY_COLOURS = {"retriever": "#4c72b0", "lm pass 2": "#55a868", "captured keys/values": "#8172b2",
                    "in-batch attention": "#c44e52", "lm pass 3": "#dd8452", "logits + CE": "#937860",
                    "other": "#8c8c8c"}


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def lm_config(path: Path, layers: int):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    config.num_hidden_layers = layers
    if hasattr(config, "layer_types") and config.layer_types:
        config.layer_types = config.layer_types[:layers]
    return config


def build(config_dir: Path, layers: int, L: int, lora_r: int, lever: dict, device):
    from transformers import AutoModel, AutoModelForCausalLM

    from revela.config import ModelConfig
    from revela.model import RevelaModel

    lora = {"r": lora_r, "alpha": 64, "dropout": 0.1}
    cfg = ModelConfig.model_validate(merge({
        "retriever": {"name": str(config_dir), "pooling": "eos", "max_length": L, "finetune": "lora", "lora": lora},
        "lm": {"name": str(config_dir), "finetune": "lora", "max_length": L, "lora": lora},
        "objective": {"temperature": 0.05, "inbatch_backend": "auto"}}, lever))
    torch.manual_seed(0)
    with device:
        backbone = AutoModel.from_config(lm_config(config_dir, layers), dtype=torch.float32)
        lm = AutoModelForCausalLM.from_config(lm_config(config_dir, layers), dtype=torch.float32)
    return RevelaModel.from_config(cfg, lm_model=lm, retriever_backbone=backbone, tokenizers=(None, None)).to(device)


def measure(model, batch, device, precision: str) -> dict:
    """One forward + backward: saved bytes by category and holder, live bytes after the forward, peak, times."""
    from revela.step_memory import SavedMemory, cpu_allocations

    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    model.train()
    model.zero_grad(set_to_none=True)
    result: dict = {}

    def step(mark):
        start = time.perf_counter()
        with SavedMemory(model) as saved, autocast:
            out = model(batch, measure_pass2=False)
        mark("forward")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            result["live_bytes"] = torch.cuda.memory_allocated(device) - result["cuda_base"]
        result["forward_s"] = time.perf_counter() - start
        result.update(saved.report(top=10_000))
        start = time.perf_counter()
        out.loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result["backward_s"] = time.perf_counter() - start
        result["loss"] = float(out.loss.detach())

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result["cuda_base"] = torch.cuda.memory_allocated(device)
        step(lambda name: None)
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device) - result.pop("cuda_base")
    else:
        allocations = cpu_allocations(step)
        result["live_bytes"] = allocations.at("forward")
        result["peak_bytes"] = allocations.peak()
    trainable = [p for p in model.parameters() if p.requires_grad]
    result["grad_bytes"] = sum(p.numel() * p.element_size() for p in trainable)
    model.zero_grad(set_to_none=True)
    return result


def time_step(model, batch, device, precision: str, warmup: int, reps: int, trace: Path | None,
              snapshot: Path | None) -> dict:
    """After `warmup` optimizer steps (revela.train.loop.Trainer: forward, backward, clipping, AdamW): the median of
    `reps` plain steps, then one step under torch's profiler, its time split by phase (revela.step_memory.phase_times:
    GPU kernel time on CUDA, CPU time here). Optionally a Chrome trace and (CUDA) a memory-history snapshot of the
    profiled step, for pytorch.org/memory_viz."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    from revela.config import TrainConfig
    from revela.step_memory import PhaseRanges, phase_times
    from revela.train.loop import Trainer

    cuda = device.type == "cuda"
    trainer = Trainer(model, TrainConfig(max_steps=10**6, warmup_steps=0, precision=precision), device)
    for _ in range(warmup):
        trainer.train_step([batch], measure=False)
    plain = []
    for _ in range(reps):  # unprofiled: what groups/s compares
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        trainer.train_step([batch], measure=False)
        if cuda:
            torch.cuda.synchronize(device)
        plain.append(time.perf_counter() - start)
    ranges = []

    def open_range(*_):
        ranges.append(record_function("revela:optimizer"))
        ranges[-1].__enter__()

    hooks = [trainer.optimizer.register_step_pre_hook(open_range),
             trainer.optimizer.register_step_post_hook(lambda *_: ranges.pop().__exit__(None, None, None))]
    if cuda:
        torch.cuda.synchronize(device)
        if snapshot:
            torch.cuda.memory._record_memory_history(max_entries=200_000)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof, PhaseRanges(model):
        trainer.train_step([batch], measure=False)
        if cuda:
            torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    for hook in hooks:
        hook.remove()
    if cuda and snapshot:
        torch.cuda.memory._dump_snapshot(str(snapshot))
        torch.cuda.memory._record_memory_history(enabled=None)
        gzip_file(snapshot)
    if trace:
        prof.export_chrome_trace(str(trace))
        gzip_file(trace)
    times = phase_times(prof.events(), device=cuda)
    total = sum(times.values())
    step_s = statistics.median(plain) if plain else None
    groups = batch["lm_input_ids"].shape[0]
    return {"step_s": step_s, "groups_per_s": groups / step_s if step_s else None,
            "peak_gib": torch.cuda.max_memory_allocated(device) / GIB if cuda else None,
            "step_s_profiled": wall, "phase_us": times, "phase_share": {k: v / total for k, v in times.items()},
            "time_base": "gpu kernels" if cuda else "cpu"}


def gzip_file(path: Path) -> None:
    """Traces and snapshots are large and compress ~10x (chrome://tracing, Perfetto and memory_viz read .gz)."""
    import gzip
    import shutil

    with open(path, "rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()


# ---------------------------------------------------------------------------------------------- fits

SCALARS = ("saved_bytes", "live_bytes", "peak_bytes", "grad_bytes")


def quantities(row: dict) -> dict[str, float]:
    values = {k: row[k] for k in SCALARS}
    values.update({f"category:{k}": v for k, v in row["by_category"].items()})
    return values


def linear_fit(rows: list[dict], depth: int) -> dict:
    """Per quantity: a + b*n from the two shallowest rows; the third (if any) checks it; the value at `depth`."""
    rows = sorted(rows, key=lambda r: r["layers"])
    (r1, r2), rest = rows[:2], rows[2:]
    q1, q2 = quantities(r1), quantities(r2)
    n1, n2 = r1["layers"], r2["layers"]
    fit = {}
    for key in q1:
        b = (q2[key] - q1[key]) / (n2 - n1)
        a = q1[key] - b * n1
        fit[key] = {"fixed": a, "per_layer": b, "at_depth": a + b * depth}
    checks = []
    for r in rest:
        for key, value in quantities(r).items():
            predicted = fit[key]["fixed"] + fit[key]["per_layer"] * r["layers"]
            checks.append({"layers": r["layers"], "quantity": key, "measured": value, "predicted": predicted})
    return {"fit": fit, "check": checks}


def holders_at_depth(rows: list[dict], depth: int, top: int | None = 5) -> list[dict]:
    """The largest holders extrapolated to `depth` (a holder inside every layer grows by one count per layer)."""
    rows = sorted(rows, key=lambda r: r["layers"])
    r1, r2 = rows[:2]
    key = lambda h: (h["category"], h["module"], tuple(h["shape"]), h["dtype"])  # noqa: E731
    h1, h2 = {key(h): h for h in r1["top_all"]}, {key(h): h for h in r2["top_all"]}
    out = []
    for k in set(h1) | set(h2):
        b1, b2 = h1.get(k, {}).get("bytes", 0), h2.get(k, {}).get("bytes", 0)
        c1, c2 = h1.get(k, {}).get("count", 0), h2.get(k, {}).get("count", 0)
        n1, n2 = r1["layers"], r2["layers"]
        per = (b2 - b1) / (n2 - n1)
        count_per = (c2 - c1) / (n2 - n1)
        out.append({"category": k[0], "module": k[1], "shape": list(k[2]), "dtype": k[3],
                    "bytes": b1 + per * (depth - n1), "count": round(c1 + count_per * (depth - n1))})
    return sorted(out, key=lambda h: -h["bytes"])[:top]


KINDS = (("lora_dropout", "LoRA dropout masks"), ("lora_A", "LoRA A inputs (dropout outputs)"),
         ("lora_B", "LoRA A outputs (r wide)"), ("base_layer", "frozen linears (weight casts)"),
         ("layernorm", "norm inputs"), ("act_fn", "MLP activations"), (".mlp", "MLP activations"),
         ("self_attn", "attention inputs/outputs"), ("", "head, log-softmax, pooling, Sim"))


def kind(holder: dict) -> str:
    """What a holder is, from its module path (e.g. `...q_proj.lora_A` -> LoRA A inputs)."""
    if holder["category"] == "captured keys/values":
        return "captured keys/values"
    if holder["category"] == "in-batch attention":
        return "in-batch attention"
    module = holder["module"]
    if module.endswith("layers.*"):  # what a checkpointed layer keeps: its inputs
        return "checkpointed layer inputs"
    return next(name for tail, name in KINDS if tail in module)


def kinds_of(holders: list[dict]) -> dict[str, float]:
    """Bytes per kind of tensor, largest first."""
    totals: dict[str, float] = {}
    for h in holders:
        totals[kind(h)] = totals.get(kind(h), 0.0) + h["bytes"]
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def kinds_at_depth(rows: list[dict], depth: int) -> dict[str, float]:
    """Bytes per kind of tensor at `depth` layers (every holder extrapolated), largest first."""
    return kinds_of(holders_at_depth(rows, depth, top=None))


def analyse(rows: list[dict], depth: int) -> dict:
    """Fits per (lever, precision, G); per group = G=2 minus G=1 at the real depth."""
    out = {}
    keys = sorted({(r["lever"], r["precision"], r["layers"] == depth) for r in rows if "error" not in r})
    for lever, precision, direct in keys:
        mine = [r for r in rows if r["lever"] == lever and r["precision"] == precision and "error" not in r
                and (r["layers"] == depth) == direct]
        by_g = {}
        for G in sorted({r["G"] for r in mine}):
            at_g = [r for r in mine if r["G"] == G]
            full = [r for r in at_g if r["layers"] == depth]
            if full:  # measured at the real depth: no extrapolation
                row = full[0]
                by_g[G] = {"fit": {k: {"at_depth": v, "measured": True} for k, v in quantities(row).items()},
                           "check": [], "top": [h for h in row["top_all"][:5]],
                           "kinds": kinds_of(row["top_all"])}
            elif len({r["layers"] for r in at_g}) >= 2:
                by_g[G] = linear_fit(at_g, depth) | {"top": holders_at_depth(at_g, depth),
                                                     "kinds": kinds_at_depth(at_g, depth)}
        entry = {"by_G": {str(g): v for g, v in by_g.items()}}
        if 1 in by_g and 2 in by_g:
            f1, f2 = by_g[1]["fit"], by_g[2]["fit"]
            entry["per_group"] = {k: f2[k]["at_depth"] - f1[k]["at_depth"] for k in f1}
            entry["fixed"] = {k: 2 * f1[k]["at_depth"] - f2[k]["at_depth"] for k in f1}
        out[f"{lever}/{precision}" + (f" (measured at {depth} layers)" if direct else "")] = entry
    return out


# ---------------------------------------------------------------------------------------------- output

def markdown(analysis: dict, depth: int) -> str:
    lines = [f"Per group at {depth} layers (G=2 minus G=1), GiB:", "",
             "| levers / precision | saved | live after fwd | peak | retriever | pass 2 | keys/values | "
             "in-batch | pass 3 | logits + CE |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in analysis.items():
        pg = entry.get("per_group")
        if not pg:
            continue
        cats = ("retriever", "lm pass 2", "captured keys/values", "in-batch attention", "lm pass 3", "logits + CE")
        cells = [pg["saved_bytes"], pg["live_bytes"], pg["peak_bytes"], *(pg[f"category:{c}"] for c in cats)]
        lines.append(f"| {name} | " + " | ".join(f"{c / GIB:.2f}" for c in cells) + " |")
    for name, entry in analysis.items():
        kinds = entry.get("by_G", {}).get("1", {}).get("kinds")
        if kinds:
            lines += ["", f"Saved for backward by kind of tensor, {name}, G=1, {depth} layers (GiB): "
                      + ", ".join(f"{k} {v / GIB:.2f}" for k, v in kinds.items() if v >= GIB / 100)]
    for name, entry in analysis.items():
        top = entry.get("by_G", {}).get("1", {}).get("top")
        if top:
            lines += ["", f"Top holders, {name}, G=1, {depth} layers:", "",
                      "| category | module | shape (one layer) | dtype | count | GiB |", "|---|---|---|---|---|---|"]
            for h in top:
                lines.append(f"| {h['category']} | {h['module']} | {h['shape']} | {h['dtype']} | {h['count']} | "
                             f"{h['bytes'] / GIB:.2f} |")
    return "\n".join(lines)


def time_markdown(rows: list[dict]) -> str:
    phases = ("retriever", "lm pass 2", "lm pass 3", "in-batch attention", "logits + CE", "optimizer", "other")
    lines = ["| levers / precision | G | layers | step s | groups/s | peak GiB | " + " | ".join(phases) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(phases)]
    for r in rows:
        if "phase_share" not in r:
            lines.append(f"| {r['lever']}/{r['precision']} | {r['G']} | {r['layers']} | {r.get('error')} |")
            continue
        shares = " | ".join(f"{100 * r['phase_share'].get(p, 0.0):.1f}%" for p in phases)
        peak = "–" if r.get("peak_gib") is None else f"{r['peak_gib']:.1f}"
        step = "–" if r.get("step_s") is None else f"{r['step_s']:.3f} | {r['groups_per_s']:.2f}"
        lines.append(f"| {r['lever']}/{r['precision']} | {r['G']} | {r['layers']} | {step} | {peak} | {shares} |")
    return "\n".join(lines)


def plot(analysis: dict, path: Path, depth: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, e in analysis.items() if "per_group" in e]
    if not names:
        return
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(names) + 1.8))
    for row, name in enumerate(names):
        pg = analysis[name]["per_group"]
        left = 0.0
        for cat, colour in CATEGORY_COLOURS.items():
            width = pg[f"category:{cat}"] / GIB
            ax.barh(row, width, left=left, color=colour, label=cat if row == 0 else None)
            left += width
        ax.plot(pg["peak_bytes"] / GIB, row, marker="|", color="black", markersize=18,
                label="peak (fwd + bwd)" if row == 0 else None)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"GiB per group (B chunks), saved for backward, {depth} layers")
    ax.set_title("Revela step memory per group, by part of the step")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / ".cache/models/smollm2-135m",
                        help="folder with the config.json of both models")
    parser.add_argument("--levers", nargs="+", choices=list(LEVERS),
                        default=["baseline", "chunked_ce", "ckpt_pass3", "ckpt_pass2", "ckpt_retriever", "all"])
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--groups", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--layers", nargs="+", type=int, default=[1, 2, 3], help="depths measured (>= 2 of them)")
    parser.add_argument("--check-groups", nargs="+", type=int, default=[1],
                        help="G values measured at the depths beyond the first two (the fit's check)")
    parser.add_argument("--B", type=int, default=16)
    parser.add_argument("--L", type=int, default=160)
    parser.add_argument("--lora-r", type=int, default=256)
    parser.add_argument("--time", action="store_true",
                        help="instead of memory rows: one profiled optimizer step per lever and G at the deepest "
                             "--layers, its time split by phase (retriever, LM passes, in-batch attention, logits + "
                             "CE, optimizer)")
    parser.add_argument("--warmup", type=int, default=2, help="--time: steps before the timed ones")
    parser.add_argument("--reps", type=int, default=3, help="--time: plain steps timed (median) before the profiled")
    parser.add_argument("--trace-dir", type=Path, help="--time: write a Chrome trace (and on CUDA a memory "
                                                        "snapshot) per row into this folder")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plot", type=Path, metavar="JSON", help="only redraw the PNG and tables of a saved run")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: checks the script")
    args = parser.parse_args()
    if args.plot:
        saved = json.loads(args.plot.read_text())
        analysis = analyse(saved["rows"], saved["depth"])
        plot(analysis, args.plot.with_suffix(".png"), saved["depth"])
        print(markdown(analysis, saved["depth"]))
        return
    if args.smoke:
        args.B, args.L, args.lora_r, args.layers = 4, 16, 4, [1, 2, 3]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from transformers import AutoConfig

    depth = AutoConfig.from_pretrained(args.config).num_hidden_layers
    if args.time:
        rows = []
        for lever in args.levers:
            for precision in args.precision:
                for G in args.groups:
                    layers = max(args.layers)
                    row = {"table": "time", "lever": lever, "precision": precision, "G": G, "B": args.B, "L": args.L,
                           "layers": layers, "lora_r": args.lora_r, "device": str(device)}
                    name = f"{lever}_{precision}_G{G}_n{layers}"
                    if args.trace_dir:
                        args.trace_dir.mkdir(parents=True, exist_ok=True)
                    try:
                        model = build(args.config, layers, args.L, args.lora_r, LEVERS[lever], device)
                        batch = random_groups(G, args.B, args.L, *[model.lm.config.vocab_size] * 2, device)
                        if device.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(device)
                        row.update(time_step(model, batch, device, "bf16" if precision == "bf16" else "fp32",
                                             args.warmup, args.reps,
                                             args.trace_dir / f"{name}.json" if args.trace_dir else None,
                                             args.trace_dir / f"{name}.pickle" if args.trace_dir else None))
                    except torch.OutOfMemoryError:
                        row["error"] = "out of memory"
                    finally:
                        model = batch = None  # noqa: F841
                        gc.collect()
                    print(json.dumps(row), flush=True)
                    rows.append(row)
        print(time_markdown(rows))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"argv": sys.argv[1:], "torch": torch.__version__, "rows": rows}, indent=1))
        return
    rows = []
    shallow = sorted(args.layers)[:2]
    for lever in args.levers:
        for precision in args.precision:
            for G in args.groups:
                for layers in sorted(args.layers):
                    if layers not in shallow and G not in args.check_groups:
                        continue
                    row = {"lever": lever, "precision": precision, "G": G, "B": args.B, "L": args.L,
                           "layers": layers, "lora_r": args.lora_r, "device": str(device)}
                    try:
                        model = build(args.config, layers, args.L, args.lora_r, LEVERS[lever], device)
                        batch = random_groups(G, args.B, args.L, *[model.lm.config.vocab_size] * 2, device)
                        result = measure(model, batch, device, precision)
                        result["top_all"] = result.pop("top")
                        row.update(result)
                    except torch.OutOfMemoryError:
                        row["error"] = "out of memory"
                    finally:
                        model = batch = None  # noqa: F841
                        gc.collect()
                    brief = {k: v for k, v in row.items() if k not in ("top_all",)}
                    print(json.dumps(brief), flush=True)
                    rows.append(row)
    analysis = analyse(rows, depth)
    print(markdown(analysis, depth))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"argv": sys.argv[1:], "torch": torch.__version__, "depth": depth,
                                        "rows": rows, "analysis": analysis}, indent=1))
        plot(analysis, args.out.with_suffix(".png"), depth)


if __name__ == "__main__":
    main()
