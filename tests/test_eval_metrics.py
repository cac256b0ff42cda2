"""Metrics on runs small enough to check by hand, and against pytrec_eval called directly."""

import math

import numpy as np
import pytest
import pytrec_eval

from revela.evaluation.metrics import aggregate, bootstrap_ci, per_query, top_k


def evaluate_run(qrels, run, ignore_identical_ids=True):
    """Mean of each metric over the judged queries, as evaluation.run scores a dataset."""
    return aggregate(per_query(qrels, run, ignore_identical_ids))


def ranked(*docs):
    """A run for one query: the first doc scores highest."""
    return {d: float(len(docs) - i) for i, d in enumerate(docs)}


def test_hand_checkable_single_relevant():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": ranked("x", "a", "y"),  # relevant at rank 2
           "q2": ranked(*[f"n{i}" for i in range(10)], "b")}  # relevant at rank 11
    m = evaluate_run(qrels, run)
    assert m["ndcg_at_10"] == pytest.approx((1 / math.log2(3) + 0) / 2)
    assert m["mrr_at_10"] == pytest.approx((1 / 2 + 0) / 2)  # rank 11 is past the MRR@10 cut
    assert m["recall_at_100"] == pytest.approx(1.0)
    assert m["map_at_100"] == pytest.approx((1 / 2 + 1 / 11) / 2)


def test_graded_relevance_matches_pytrec_eval_directly():
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(150)]
    qrels = {f"q{i}": {d: int(rng.integers(0, 3)) for d in rng.choice(docs, 5, replace=False)} for i in range(30)}
    run = {q: {d: float(s) for d, s in zip(docs, rng.random(len(docs)))} for q in qrels}
    ours = evaluate_run(qrels, run)
    direct = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map_cut.100"}).evaluate(run)
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(
        {q: dict(sorted(r.items(), key=lambda kv: -kv[1])[:10]) for q, r in run.items()})
    for key, name, res in (("ndcg_at_10", "ndcg_cut_10", direct), ("recall_at_100", "recall_100", direct),
                           ("map_at_100", "map_cut_100", direct), ("mrr_at_10", "recip_rank", rr)):
        assert ours[key] == pytest.approx(np.mean([res[q][name] for q in qrels]))
    assert 0 < ours["ndcg_at_10"] < 1


def test_ignore_identical_ids_drops_self_hits():
    qrels = {"q1": {"a": 1}}
    run = {"q1": ranked("q1", "a")}  # the query itself sits in the corpus and ranks first
    assert evaluate_run(qrels, run)["mrr_at_10"] == pytest.approx(1.0)
    assert evaluate_run(qrels, run, ignore_identical_ids=False)["mrr_at_10"] == pytest.approx(0.5)


def test_missing_query_counts_as_zero_not_dropped():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    m = evaluate_run(qrels, {"q1": ranked("a")})
    assert m["ndcg_at_10"] == pytest.approx(0.5) and m["recall_at_100"] == pytest.approx(0.5)
    assert per_query(qrels, {"q1": ranked("a"), "q2": {}})["ndcg_at_10"] == {"q1": 1.0, "q2": 0.0}


def test_top_k_breaks_ties_like_trec_eval():
    run = {"q": {"a": 1.0, "b": 1.0, "c": 0.5}}
    assert list(top_k(run, 2)["q"]) == ["b", "a"]  # equal scores: doc id descending, trec_eval's order
    qrels = {"q": {"a": 1}}
    # the relevant doc ties with a higher id: trec_eval puts it second, and the cut run agrees
    assert evaluate_run(qrels, run)["mrr_at_10"] == pytest.approx(
        pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)["q"]["recip_rank"]) == 0.5


def test_bootstrap_ci_brackets_the_mean():
    values = [0.0, 1.0] * 50
    lo, hi = bootstrap_ci(values)
    assert lo < 0.5 < hi and hi - lo < 0.3
    assert bootstrap_ci([0.7] * 10) == (pytest.approx(0.7), pytest.approx(0.7))
