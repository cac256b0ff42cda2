"""Do the `query: ` / `passage: ` prefixes help or hurt an encoder that ships none of its own?

Scores one model (default all-MiniLM-L6-v2, an offline asset) on the offline suite under several prefix pairs,
everything else fixed (its own pooling, normalisation, and one length for queries and passages, by default the
length the model declares). Passages are encoded once per distinct passage prefix, queries once per distinct query
prefix. Writes one JSON with nDCG@10, its 95% bootstrap interval and the per-query nDCG@10 of every variant, and
the paired difference of each variant against the first one (`revela.evaluation.significance`).

    .venv/bin/python bench/bench_prefixes.py --out bench/prefixes_minilm.json
    .venv/bin/python bench/bench_prefixes.py --datasets stdlib-code --variants 'none=|' 'e5=query: |passage: '

A variant is `label=QUERY_PREFIX|PASSAGE_PREFIX`. Set HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_VARIANTS = ["none=|", "e5=query: |passage: ", "query-only=query: |"]


def parse_variant(text: str) -> tuple[str, str, str]:
    label, _, pair = text.partition("=")
    query, sep, passage = pair.partition("|")
    if not label or not sep:
        raise SystemExit(f"--variants: {text!r} is not label=QUERY_PREFIX|PASSAGE_PREFIX")
    return label, query, passage


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="all-minilm-l6-v2")
    ap.add_argument("--datasets", nargs="+", default=["stdlib-code", "pyfaq"])
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    ap.add_argument("--max-length", type=int, default=None, help="tokens per text (default: the model's own)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default="bench/prefixes_minilm.json")
    args = ap.parse_args()

    import numpy as np

    from revela.evaluation.beir import load_beir
    from revela.evaluation.encode import encode_local
    from revela.evaluation.metrics import MAIN_SCORE, bootstrap_ci, per_query
    from revela.evaluation.search import search, to_run
    from revela.evaluation.significance import paired_difference
    from revela.evaluation.suite import resolve_dataset
    from revela.retriever import Retriever

    variants = [parse_variant(v) for v in args.variants]
    retriever = Retriever.load(args.model)
    native = retriever.protocol
    length = args.max_length or native.max_length
    result = {"model": args.model, "native_protocol": native.model_dump(), "max_length": length,
              "variants": {label: {"query_prefix": q, "passage_prefix": p} for label, q, p in variants},
              "datasets": {}}
    started = time.perf_counter()
    for name in args.datasets:
        ds = load_beir(resolve_dataset(name))
        cache: dict[tuple[str, str], np.ndarray] = {}

        def encode(kind: str, prefix: str) -> np.ndarray:
            if (kind, prefix) not in cache:
                retriever.protocol = native.model_copy(update={
                    "query_prefix": prefix, "passage_prefix": prefix, "max_length": length,
                    "passage_max_length": length})
                texts = ds.doc_texts() if kind == "passage" else ds.query_texts()
                t = time.perf_counter()
                cache[(kind, prefix)] = encode_local(retriever, texts, kind, args.batch_size, progress=True,
                                                     desc=f"{name} {kind} {prefix!r}")
                print(f"{name}: {len(texts)} {kind}s with {prefix!r} in {time.perf_counter() - t:.0f} s", flush=True)
            return cache[(kind, prefix)]

        entry = {"num_queries": len(ds.queries), "num_docs": len(ds.corpus), "content_hash": ds.content_hash,
                 "variants": {}}
        for label, q_prefix, p_prefix in variants:
            scores, idx = search(encode("query", q_prefix), encode("passage", p_prefix), k=100)
            values = per_query(ds.qrels, to_run(ds.query_ids, ds.doc_ids, scores, idx))[MAIN_SCORE]
            mean = float(np.mean(list(values.values())))
            entry["variants"][label] = {"ndcg_at_10": mean,
                                        "ndcg_at_10_ci95": list(bootstrap_ci(list(values.values()))),
                                        "per_query": {q: round(v, 6) for q, v in values.items()}}
            print(f"{name} {label}: nDCG@10 {mean:.4f}", flush=True)
        first = variants[0][0]
        for label, _, _ in variants[1:]:
            diff = paired_difference([{name: entry["variants"][label]["per_query"]}],
                                     [{name: entry["variants"][first]["per_query"]}])
            entry["variants"][label][f"minus_{first}"] = diff.as_dict()
        result["datasets"][name] = entry
    result["wall_s"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for name, entry in result["datasets"].items():
        for label, v in entry["variants"].items():
            extra = ""
            for key, d in v.items():
                if key.startswith("minus_"):
                    extra = f"  {key}: {d['delta']:+.4f} (95% CI {d['low']:+.4f} to {d['high']:+.4f})"
            print(f"{name:12s} {label:12s} {v['ndcg_at_10']:.4f}{extra}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
