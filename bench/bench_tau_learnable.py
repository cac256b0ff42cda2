"""Is a learnable (bounded) tau worth adding next to `temperature: auto`? A small CPU experiment.

Real models (all-MiniLM-L6-v2 retriever, full fine-tuning at retriever_lr; SmolLM2-135M LM, LoRA r=16), real groups
(B=8 adjacent chunks <= `--max-tokens` tokens of the `rich` package's source, as the CPU configs with shorter chunks),
trained in process with the project's Trainer from the same seed, in up to three arms:

- `auto`: tau calibrated once (revela.train.temperature) and fixed;
- `learnable`: log tau a parameter starting at the calibrated value, clamped to [tau/10, 10 tau], trained with
  Adam at `--tau-lr` (its own group, constant rate) on the same loss;
- `paper`: tau = 1e-4 fixed (the one-hot case, for reference).

Logged per step: tau, Sim entropy as a share of ln(B-1), pass-3 loss, retriever gradient norm; at the end, on
held-out groups, pass-2/pass-3 loss and the retriever's top-1 same-document hit-rate (revela.train.heldout).

    .venv/bin/python bench/bench_tau_learnable.py --steps 30 --arms auto,learnable --out bench/tau_learnable_cpu.json
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch


def prepared_groups(tmp: Path, group_size: int, max_tokens: int) -> list[dict]:
    from revela.data.prepare import prepare
    from revela.data.shards import read_groups
    from revela.train.data import default_sources

    prepare(default_sources(), tmp / "groups", group_size=group_size, grouping="adjacent", max_words=max_tokens * 3 // 4,
            max_tokens=max_tokens, docs_per_window=4, tokenizer="smollm2-135m", progress=False, quiet=True)
    return read_groups(tmp / "groups").select(["texts", "doc_ids", "kind"]).to_pylist()


def build(seed: int, max_tokens: int):
    from revela.config import ModelConfig
    from revela.model import RevelaModel

    torch.manual_seed(seed)
    cfg = ModelConfig.model_validate({
        "retriever": {"name": "all-minilm-l6-v2", "finetune": "full", "max_length": max_tokens},
        "lm": {"name": "smollm2-135m", "finetune": "lora", "max_length": max_tokens,
               "lora": {"r": 16, "alpha": 32, "dropout": 0.05}},
        "objective": {"temperature": "auto"}})
    return RevelaModel.from_config(cfg)


def make_learnable(model, tau0: float, lo: float, hi: float) -> torch.nn.Parameter:
    """Replace the model's fixed tau by exp(clamp(log tau)) with log tau a parameter (experiment only)."""
    from revela.model import as_groups, similarity_weights

    model.log_tau = torch.nn.Parameter(torch.tensor(math.log(tau0)))
    bounds = (math.log(lo), math.log(hi))

    def retriever_similarity(batch):
        tau = model.log_tau.clamp(*bounds).exp()
        weights = similarity_weights(*model.sim_embeddings(batch), tau)
        return weights[0] if as_groups(batch)[1] else weights

    model.retriever_similarity = retriever_similarity
    return model.log_tau


def run_arm(arm: str, rows: list[dict], held: list[dict], args) -> dict:
    from revela.batch import GroupTokenizer
    from revela.config import TrainConfig
    from revela.train.heldout import heldout_metrics
    from revela.train.loop import Trainer
    from revela.train.temperature import calibrate

    model = build(args.seed, args.max_tokens)
    tokenizer = GroupTokenizer(model.retriever.tokenizer, model.lm_tokenizer, model.retriever.protocol,
                               args.max_tokens, False)
    batches = [{**{k: torch.from_numpy(v) for k, v in tokenizer(list(r["texts"])).items()},
                "is_code": torch.tensor(1)} for r in rows]
    calibration = calibrate(model, batches[:8], args.target)
    model.temperature = 1e-4 if arm == "paper" else calibration.temperature
    log_tau = None
    if arm == "learnable":
        log_tau = make_learnable(model, calibration.temperature, calibration.temperature / 10,
                                 calibration.temperature * 10)
    cfg = TrainConfig(max_steps=args.steps, lr=1e-3, retriever_lr=2e-5, warmup_steps=5, seed=args.seed)
    torch.manual_seed(args.seed)
    trainer = Trainer(model, cfg, torch.device("cpu"))
    if log_tau is not None:  # its own group at a constant rate (the Trainer put it with the LM's parameters)
        for group in trainer.optimizer.param_groups:
            group["params"] = [p for p in group["params"] if p is not log_tau]
        trainer.optimizer.add_param_group({"params": [log_tau], "lr": args.tau_lr})
        trainer.scheduler.base_lrs.append(args.tau_lr)
        trainer.scheduler.lr_lambdas.append(lambda step: 1.0)
    history, seen = [], {}
    if log_tau is not None:  # d loss / d log tau of each step, as the step's own backward computes it
        log_tau.register_hook(lambda grad: seen.update(grad=float(grad)))
    for step in range(args.steps):
        batch = batches[step % len(batches)]
        m = trainer.train_step([batch])
        tau_grad = seen.pop("grad", None)
        tau = float(log_tau.detach().exp()) if log_tau is not None else model.temperature
        history.append({"step": m["step"], "loss": m["loss"], "tau": tau, "tau_grad": tau_grad,
                        "sim_entropy_fraction": m["sim_entropy_fraction"],
                        "grad_norm_retriever": m["grad_norm_retriever"]})
        print(f"# {arm} step {m['step']}: loss {m['loss']:.4f} tau {tau:.4g} H {m['sim_entropy_fraction']:.0%}",
              file=sys.stderr)
    if log_tau is not None:
        model.temperature = float(log_tau.detach().exp())
    token = functools.cache(lambda kind: tokenizer)
    after = heldout_metrics(model, token, held)
    return {"arm": arm, "calibrated_tau": calibration.temperature, "history": history, "heldout_after": after}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--arms", default="auto,learnable,paper")
    ap.add_argument("--target", type=float, default=0.7)
    ap.add_argument("--tau-lr", type=float, default=0.02)
    ap.add_argument("--heldout", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        groups = prepared_groups(Path(tmp), 8, args.max_tokens)
    held, train = groups[-args.heldout:], groups[:-args.heldout][:args.steps]
    results = [run_arm(arm, train, held, args) for arm in args.arms.split(",")]
    report = {"command": " ".join(sys.argv), "wall_s": time.perf_counter() - started, "train_groups": len(train),
              "heldout_groups": len(held), "arms": results}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    print("| arm | tau start → end | Sim H share, first → last 5 steps | loss, first → last 5 steps | "
          "held-out pass-3 loss | held-out top-1 same-doc |")
    print("|---|---|---|---|---|---|")
    for r in results:
        h = r["history"]
        mean = lambda key, part: sum(x[key] for x in part) / len(part)
        a = r["heldout_after"]
        print(f"| {r['arm']} | {h[0]['tau']:.4g} → {h[-1]['tau']:.4g} | {mean('sim_entropy_fraction', h[:5]):.0%} → "
              f"{mean('sim_entropy_fraction', h[-5:]):.0%} | {mean('loss', h[:5]):.3f} → {mean('loss', h[-5:]):.3f} | "
              f"{a['pass3_loss']:.4f} | {a['top1_same_doc']:.3f} (chance {a['top1_chance']:.3f}) |")


if __name__ == "__main__":
    main()
