"""How soft is Sim at a given tau, per retriever backbone, and how well does `temperature: auto` hit its target?

For each retriever (the real offline assets: all-MiniLM-L6-v2 with its own pooling, SmolLM2-135M with EOS pooling)
and group size B, real groups are prepared with `revela prepare` (adjacent grouping, as the shipped configs) from
a code corpus (the embedded default: the `rich` package's source) and a prose corpus (the pyfaq evaluation set's
documents, read as text only), tokenized with the training views (query view vs passage view, first half for
prose), and embedded once with the retriever in eval mode. Reported, per setting:

- the off-diagonal cosine spread (min, mean, max) of the query/passage views;
- the mean Sim row entropy as a fraction of ln(B-1) at each tau of `--taus` (the mean over groups, and the 5th and
  95th percentiles of the per-group means);
- for each target of `--targets` and each count of `--calibration-groups`: tau from
  `revela.train.temperature.calibrate` on that many first groups (what a run calibrates on, on rank 0), and the
  entropy fraction that tau gives on the groups after them (mean, and 5th/95th percentiles of per-group means).

    .venv/bin/python bench/bench_temperature.py --out bench/tau_cpu.json

Prints a markdown table and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RETRIEVERS = {"minilm": ("all-minilm-l6-v2", "auto"), "smollm2-eos": ("smollm2-135m", "eos")}


def corpus_sources(kind: str, tmp: Path) -> list[str]:
    if kind == "code":
        from revela.train.data import default_sources

        return default_sources()
    from revela.assets import cache_dir

    corpus = cache_dir() / "evals" / "pyfaq" / "corpus.jsonl"
    out = tmp / "pyfaq-text.jsonl"  # text only: the documents, not the evaluation set's ids or titles
    with open(corpus) as f, open(out, "w") as g:
        for line in f:
            g.write(json.dumps({"text": json.loads(line)["text"], "kind": "prose"}) + "\n")
    return [str(out)]


def groups_of(kind: str, group_size: int, max_tokens: int, count: int, tmp: Path) -> list[list[str]]:
    from revela.data.prepare import prepare
    from revela.data.shards import read_groups

    out = tmp / f"{kind}-b{group_size}-{max_tokens}"
    if not (out / "manifest.json").is_file():
            prepare(corpus_sources(kind, tmp), out, group_size=group_size, grouping="adjacent", max_words=max_tokens * 3 // 4,
                max_tokens=max_tokens, tokenizer="smollm2-135m", progress=False, quiet=True)
    texts = read_groups(out).column("texts").to_pylist()
    return texts[:count]


def load_model(name: str, pooling: str, max_length: int):
    from revela.config import ModelConfig
    from revela.model import RevelaModel, retriever_protocol
    from revela.assets import resolve_model
    from revela.retriever import Retriever
    from transformers import AutoModel, AutoTokenizer

    cfg = ModelConfig.model_validate({"retriever": {"name": name, "pooling": pooling, "max_length": max_length}})
    path = resolve_model(name)
    backbone = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    retriever = Retriever(backbone, tok, retriever_protocol(cfg, backbone.config, path))
    return RevelaModel(retriever, None, None, temperature=None)  # only the retriever's Sim is measured here


def percentiles(values: list[float]) -> dict:
    a = np.asarray(values)
    return {"mean": float(a.mean()), "p5": float(np.percentile(a, 5)), "p95": float(np.percentile(a, 95))}


def measure(model, groups: list[list[str]], kind: str, max_length: int, taus: list[float], targets: list[float],
            calibration_groups: list[int]) -> dict:
    from transformers import AutoTokenizer

    from revela.assets import resolve_model
    from revela.batch import GroupTokenizer
    from revela.model import similarity_weights
    from revela.train.temperature import bisect_temperature, mean_entropy_fraction

    tokenizer = GroupTokenizer(model.retriever.tokenizer, AutoTokenizer.from_pretrained(resolve_model("smollm2-135m")),
                               model.retriever.protocol, max_length, first_half=kind == "prose")
    batches = [{k: torch.from_numpy(v) for k, v in tokenizer(texts).items()} for texts in groups]
    model.retriever.eval()
    with torch.no_grad():
        views = [model.sim_embeddings(b) for b in batches]
    query, passage = torch.cat([q for q, _ in views]), torch.cat([p for _, p in views])
    B = query.shape[1]
    cos = query @ passage.transpose(-1, -2)
    off = cos[:, ~torch.eye(B, dtype=torch.bool)]
    per_group = lambda tau, q, p: [mean_entropy_fraction(q[i:i + 1], p[i:i + 1], tau) for i in range(len(q))]
    result = {"groups": len(groups), "B": B,
              "cosine": {"min": float(off.min()), "mean": float(off.mean()), "max": float(off.max()),
                         "row_spread_mean": float((off.view(len(cos), B, B - 1).amax(-1)
                                                   - off.view(len(cos), B, B - 1).amin(-1)).mean())},
              "fraction_at_tau": {f"{t:g}": percentiles(per_group(t, query, passage)) for t in taus},
              "top1_weight_at_tau": {f"{t:g}": float(similarity_weights(query, passage, t).amax(-1).mean())
                                     for t in taus},
              "auto": {}}
    held = max(calibration_groups)
    held_q, held_p = query[held:], passage[held:]
    for count in calibration_groups:
        for target in targets:
            # what `calibrate` does (eval-mode embeddings, then the bisection), on the embeddings computed above
            tau = bisect_temperature(query[:count], passage[:count], target)
            result["auto"][f"{target:g}@{count}"] = {
                "target": target, "calibration_groups": count, "temperature": tau,
                "on_calibration_groups": mean_entropy_fraction(query[:count], passage[:count], tau),
                "on_other_groups": percentiles(per_group(tau, held_q, held_p))}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--retrievers", default="minilm,smollm2-eos")
    ap.add_argument("--kinds", default="code,prose")
    ap.add_argument("--group-sizes", default="8,16")
    ap.add_argument("--max-length", type=int, default=64, help="tokens per chunk (64: CPU configs, 160: GPU configs)")
    ap.add_argument("--groups", type=int, default=40)
    ap.add_argument("--calibration-groups", default="1,8", help="groups tau is calibrated on (comma list)")
    ap.add_argument("--taus", default="1e-4,1e-3,3e-3,0.01,0.02,0.05,0.1")
    ap.add_argument("--targets", default="0.5,0.6,0.7,0.8")
    ap.add_argument("--data-dir", default=None, help="keep the prepared groups here (reused when present)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    taus = [float(t) for t in args.taus.split(",")]
    targets = [float(t) for t in args.targets.split(",")]
    counts = [int(c) for c in args.calibration_groups.split(",")]
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.data_dir or scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        data = {(k, b): groups_of(k, b, args.max_length, args.groups, tmp)
                for k in args.kinds.split(",") for b in map(int, args.group_sizes.split(","))}
        for label in args.retrievers.split(","):
            name, pooling = RETRIEVERS[label]
            model = load_model(name, pooling, args.max_length)
            for (kind, b), groups in data.items():
                r = measure(model, groups, kind, args.max_length, taus, targets, counts)
                rows.append({"retriever": label, "kind": kind, **r})
                print(f"# {label} {kind} B={b}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    report = {"command": " ".join(sys.argv), "max_length": args.max_length, "calibration_groups": counts,
              "torch": torch.__version__, "wall_s": time.perf_counter() - started, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    head = "| retriever | kind | B | cos min/mean/max | " + " | ".join(f"τ={t:g}" for t in taus) + " |"
    print(head)
    print("|" + "---|" * (4 + len(taus)))
    for r in rows:
        c = r["cosine"]
        cells = [f"{r['fraction_at_tau'][f'{t:g}']['mean']:.0%} ({r['fraction_at_tau'][f'{t:g}']['p5']:.0%}–"
                 f"{r['fraction_at_tau'][f'{t:g}']['p95']:.0%})" for t in taus]
        print(f"| {r['retriever']} | {r['kind']} | {r['B']} | {c['min']:.2f}/{c['mean']:.2f}/{c['max']:.2f} | "
              + " | ".join(cells) + " |")
    print()
    print("| retriever | kind | B | target | calibration groups | auto τ | on them | on later groups (mean, p5–p95) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for a in r["auto"].values():
            o = a["on_other_groups"]
            print(f"| {r['retriever']} | {r['kind']} | {r['B']} | {a['target']:.0%} | {a['calibration_groups']} | "
                  f"{a['temperature']:.4g} | {a['on_calibration_groups']:.1%} | {o['mean']:.0%} "
                  f"({o['p5']:.0%}–{o['p95']:.0%}) |")


if __name__ == "__main__":
    main()
