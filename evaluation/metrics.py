"""Retrieval metrics with pytrec_eval (the pytrec-eval-terrier wheel): no metric is computed by hand here.

Keys follow mteb: `ndcg_at_10` (the main score), `recall_at_100`, `mrr_at_10`, `map_at_100`.

- nDCG@10, Recall@100, MAP@100 are trec_eval's `ndcg_cut_10`, `recall_100`, `map_cut_100` on the whole run.
- MRR@10 is trec_eval's `recip_rank` on the run cut to its 10 best documents per query (trec_eval has no
  cutoff for recip_rank; mteb cuts the same way). The cut uses trec_eval's own order: score descending, ties
  broken by document id descending.
- `ignore_identical_ids` (default on, as in BEIR) drops a retrieved document whose id equals the query id
  (ArguAna/Quora put queries in the corpus).
- Averages are over every query in the qrels (`pytrec_eval.compute_aggregated_measure`); a judged query that the
  run misses entirely counts as 0 (trec_eval's `-c`), instead of silently leaving the average.
"""

from __future__ import annotations

import numpy as np
import pytrec_eval

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]

# our key -> (trec_eval measure to request, result key, cutoff applied to the run first)
MEASURES = {
    "ndcg_at_10": ("ndcg_cut.10", "ndcg_cut_10", None),
    "recall_at_100": ("recall.100", "recall_100", None),
    "map_at_100": ("map_cut.100", "map_cut_100", None),
    "mrr_at_10": ("recip_rank", "recip_rank", 10),
}
MAIN_SCORE = "ndcg_at_10"


def drop_identical_ids(run: Run) -> Run:
    return {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}


def top_k(run: Run, k: int) -> Run:
    """Each query's k best documents in trec_eval's ranking order (score desc, then doc id desc)."""
    return {q: dict(sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:k]) for q, docs in run.items()}


def per_query(qrels: Qrels, run: Run, ignore_identical_ids: bool = True) -> dict[str, dict[str, float]]:
    """metric key -> {query id -> value} for every judged query (0.0 where the run has nothing for it)."""
    if ignore_identical_ids:
        run = drop_identical_ids(run)
    run = {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items() if q in qrels and docs}
    out: dict[str, dict[str, float]] = {}
    by_cutoff: dict[int | None, list[str]] = {}
    for key, (_, _, cut) in MEASURES.items():
        by_cutoff.setdefault(cut, []).append(key)
    for cut, keys in by_cutoff.items():
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {MEASURES[k][0] for k in keys})
        results = evaluator.evaluate(top_k(run, cut) if cut else run)
        for key in keys:
            name = MEASURES[key][1]
            out[key] = {q: results[q][name] if q in results else 0.0 for q in qrels}
    return out


def aggregate(values: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean per metric with pytrec_eval's own aggregation."""
    return {key: float(pytrec_eval.compute_aggregated_measure(MEASURES[key][1], list(v.values())))
            for key, v in values.items()}


def bootstrap_ci(values: list[float] | np.ndarray, level: float = 0.95, samples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-query values (small sets like pyfaq need one)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (float("nan"), float("nan"))
    means = v[np.random.default_rng(seed).integers(0, v.size, size=(samples, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
