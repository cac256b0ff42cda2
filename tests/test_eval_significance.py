"""The paired bootstrap behind every "rises"/"falls" of the sweep report, on synthetic per-query scores: a known
effect is found, pure noise is not (at about the stated rate), seeds widen the interval, unpaired data is refused."""

import numpy as np
import pytest

from revela.evaluation.significance import NotComparable, mean_interval, paired_difference


def scores(values, dataset="d"):
    return {dataset: {f"q{n}": float(v) for n, v in enumerate(values)}}


def binary_like(rng, queries=200, mean=0.5):
    """nDCG@10-like values: many queries at 0 or 1, some in between."""
    v = rng.uniform(0, 1, queries)
    return np.where(rng.uniform(0, 1, queries) < 0.6, (v < mean).astype(float), v)


def test_a_known_effect_is_significant_and_its_interval_covers_it():
    rng = np.random.default_rng(0)
    base = binary_like(rng)
    better = np.clip(base + 0.08 + rng.normal(0, 0.1, base.size), 0, 1)
    diff = paired_difference([scores(better)], [scores(base)])
    assert diff.verdict == "rise" and diff.low > 0 and diff.p_value < 0.05
    assert diff.low < better.mean() - base.mean() < diff.high
    assert diff.delta == pytest.approx(better.mean() - base.mean())
    assert paired_difference([scores(base)], [scores(better)]).verdict == "fall"
    assert diff == paired_difference([scores(better)], [scores(base)])  # deterministic


def test_pure_noise_is_rarely_significant():
    """Two systems that differ only by per-query noise: at 95% about 5% of comparisons may come out significant."""
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(100):
        base = binary_like(rng)
        a = np.clip(base + rng.normal(0, 0.15, base.size), 0, 1)
        b = np.clip(base + rng.normal(0, 0.15, base.size), 0, 1)
        hits += paired_difference([scores(a)], [scores(b)], resamples=1000).verdict != "none"
    assert hits <= 12


def test_the_issues_example_is_no_significant_difference():
    """0.4966 -> 0.5039 on 200 queries and one seed (issue 16): a difference well inside the noise."""
    rng = np.random.default_rng(2)
    a = binary_like(rng)
    b = np.clip(a + rng.normal(0, 0.2, a.size), 0, 1)
    a, b = a - a.mean() + 0.4966, b - b.mean() + 0.5039  # exactly the issue's means
    diff = paired_difference([scores(b)], [scores(a)])
    assert diff.delta == pytest.approx(0.0073) and diff.verdict == "none" and diff.low < 0 < diff.high


def test_seeds_are_resampled_too():
    """Seeds that disagree widely: averaging them per query alone would call a small gap certain; resampling the
    seeds says it is not."""
    rng = np.random.default_rng(3)
    base = binary_like(rng)
    a = [scores(np.clip(base + 0.1, 0, 1)), scores(np.clip(base - 0.1, 0, 1))]  # two seeds, far apart
    b = [scores(np.clip(base + 0.02, 0, 1))]
    assert paired_difference(a, b).verdict == "none"
    seed_means = [scores(np.mean([np.array(list(r["d"].values())) for r in a], axis=0))]
    assert paired_difference(seed_means, b).verdict == "fall"  # the same data with the seeds averaged away


def test_several_datasets_are_averaged_like_the_dev_metric():
    rng = np.random.default_rng(4)
    small, large = binary_like(rng, 20), binary_like(rng, 400)
    a = [{**scores(small + 0.0, "small"), **scores(large, "large")}]
    b = [{**scores(np.clip(small - 0.1, 0, 1), "small"), **scores(large, "large")}]
    diff = paired_difference(a, b)
    expected = ((small - np.clip(small - 0.1, 0, 1)).mean() + 0) / 2  # mean over datasets, not over queries
    assert diff.delta == pytest.approx(expected) and diff.queries == 420
    est = mean_interval(a)
    assert est.low < est.mean < est.high and est.mean == pytest.approx((small.mean() + large.mean()) / 2)


def test_runs_on_different_queries_are_refused():
    a = scores([0.1, 0.2, 0.3])
    b = {"d": {"q0": 0.1, "q1": 0.2, "x": 0.3}}
    with pytest.raises(NotComparable, match="different queries"):
        paired_difference([a], [b])
    with pytest.raises(NotComparable, match="different datasets"):
        paired_difference([a], [scores([0.1, 0.2, 0.3], "other")])
    with pytest.raises(ValueError, match="level"):
        paired_difference([a], [a], level=95)
