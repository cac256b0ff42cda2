"""Build the offline suite and reproduce the reference baselines of docs/offline-assets.md, Evaluation sets
(nDCG@10, ±0.01).

    targets                      stdlib-code   pyfaq
    BM25 (bm25s, stem+stop)      0.458 (identifier split)   0.401 (plain)
    all-MiniLM-L6-v2             0.550         0.790   (its own mean pooling, no prefixes, max length 256)

Everything goes through the platform's code path (`revela.evaluation.run.evaluate`): the suite builder, BEIR
loader, encoder, FAISS exact search and pytrec_eval. Reports and TREC runs land in --out. Prints one JSON object
and exits 1 when a number is outside the tolerance.

    .venv/bin/python bench/reproduce_baselines.py --out results/baselines            # ~8 min on 2 CPU cores
    .venv/bin/python bench/reproduce_baselines.py --skip-dense                       # BM25 only, seconds

Set HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 (and the RAY_* variables for --encoder ray).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

TARGETS = {
    ("stdlib-code", "bm25_ident_split"): 0.458,
    ("pyfaq", "bm25"): 0.401,
    ("stdlib-code", "all-minilm-l6-v2"): 0.550,
    ("pyfaq", "all-minilm-l6-v2"): 0.790,
}
TOLERANCE = 0.01


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/baselines", help="where the reports and run files go")
    ap.add_argument("--eval-dir", default=None, help="suite folder (default $REVELA_CACHE/evals or .cache/evals)")
    ap.add_argument("--skip-dense", action="store_true", help="BM25 only")
    ap.add_argument("--encoder", default="local", choices=["local", "ray"])
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    from revela.evaluation.run import evaluate
    from revela.evaluation.settings import EvalSettings
    from revela.evaluation.suite import build_suite

    t0 = time.perf_counter()
    built = build_suite(args.eval_dir)
    build_s = time.perf_counter() - t0
    out = Path(args.out)
    sets = [str(built["stdlib-code"]), str(built["pyfaq"])]
    measured, reports = {}, {}
    bm = evaluate(EvalSettings.of(datasets=sets, output=out / "bm25.json", bm25=True), show_table=True, progress=False)
    reports["bm25"] = str(out / "bm25.json")
    for name, entry in bm["datasets"].items():
        for key, base in entry["baselines"].items():
            measured[(name, key)] = base["ndcg_at_10"]
    if not args.skip_dense:
        if args.encoder == "ray":
            import ray

            ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        dense = evaluate(EvalSettings.of(model="all-minilm-l6-v2", datasets=sets, output=out / "all-minilm-l6-v2.json",
                                         max_length=256, batch_size=args.batch_size, encoder=args.encoder),
                         show_table=True, progress=False)
        reports["all-minilm-l6-v2"] = str(out / "all-minilm-l6-v2.json")
        for name, entry in dense["datasets"].items():
            measured[(name, "all-minilm-l6-v2")] = entry["ndcg_at_10"]
    rows, ok = [], True
    for (name, system), target in TARGETS.items():
        if (name, system) not in measured:
            continue
        value = measured[(name, system)]
        passed = abs(value - target) <= TOLERANCE
        ok &= passed
        rows.append({"dataset": name, "system": system, "ndcg_at_10": round(value, 4), "target": target,
                     "delta": round(value - target, 4), "within_0.01": passed})
    other = [{"dataset": n, "system": s, "ndcg_at_10": round(v, 4)} for (n, s), v in measured.items()
             if (n, s) not in TARGETS]
    print(json.dumps({"checks": rows, "other": other, "all_within_tolerance": ok,
                      "content_hashes": {n: e["content_hash"] for n, e in bm["datasets"].items()},
                      "build_seconds": round(build_s, 1), "wall_seconds": round(time.perf_counter() - t0, 1),
                      "reports": reports, "command": " ".join(["python"] + sys.argv)}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
