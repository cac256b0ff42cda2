"""Is a difference in nDCG@10 real or noise? A paired bootstrap over queries (and over seeds when there are several).

A system is given as a list of runs, one per seed; a run is `{dataset: {query id: score}}` (per-query nDCG@10, as
evaluation reports store it). The score of a run is what `dev_ndcg_at_10` is: the mean over datasets of the mean
over queries. The difference A − B is resampled B times (default 4000):

- queries are drawn with replacement inside each dataset (stratified), the same draw for A and B (paired: every
  query is scored by both systems, so the query-to-query spread cancels out of the difference);
- when a system has several seeds, its seeds are drawn with replacement too, independently for A and B, so the
  interval also covers how much training itself varies.

The interval is the percentile interval at `level` (95% by default). A difference is a **rise** when the whole
interval is above 0, a **fall** when it is below 0, and otherwise "no significant difference". Both systems must
have been scored on the same queries (the same sampled dev set): anything else raises `NotComparable`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Run = dict[str, dict[str, float]]
"""{dataset: {query id: per-query score}} of one seed."""
Verdict = Literal["rise", "fall", "none"]
LEVEL = 0.95
RESAMPLES = 4000
_BLOCK = 250  # resamples drawn at once (bounds memory: block x seeds x queries floats)


class NotComparable(ValueError):
    """The two systems were not scored on the same datasets and queries."""


@dataclass(frozen=True)
class Difference:
    delta: float
    """mean(A) − mean(B), each the mean over datasets of the mean over queries, averaged over seeds."""
    low: float
    high: float
    level: float
    p_value: float
    """Two-sided bootstrap p-value: twice the share of resampled differences on the far side of 0."""
    queries: int
    seeds_a: int
    seeds_b: int

    @property
    def verdict(self) -> Verdict:
        return "rise" if self.low > 0 else "fall" if self.high < 0 else "none"

    def interval(self) -> str:
        return f"{self.level:.0%} CI {self.low:+.4f} to {self.high:+.4f}"

    def describe(self) -> str:
        """'+0.0123 (95% CI +0.0040 to +0.0210)'."""
        return f"{self.delta:+.4f} ({self.interval()})"

    def as_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    level: float
    queries: int
    seeds: int

    def as_dict(self) -> dict:
        return asdict(self)


def _matrices(a: list[Run], b: list[Run] | None) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """{dataset: (A [seeds, queries], B [seeds, queries] or None)} on one query order; checks they match."""
    if not a or (b is not None and not b):
        raise NotComparable("a system without any scored run")
    datasets = sorted(a[0])
    runs = a + (b or [])
    for run in runs:
        if sorted(run) != datasets:
            raise NotComparable(f"scored on different datasets: {sorted(run)} vs {datasets}")
    out = {}
    for name in datasets:
        qids = sorted(a[0][name])
        for run in runs:
            if len(run[name]) != len(qids) or set(run[name]) != set(qids):
                raise NotComparable(f"{name}: scored on different queries ({len(run[name])} vs {len(qids)}); "
                                    "compare runs evaluated on the same sampled dev set")
        if not qids:
            raise NotComparable(f"{name}: no queries")

        def matrix(side: list[Run]) -> np.ndarray:
            return np.array([[float(run[name][q]) for q in qids] for run in side], dtype=np.float64)

        out[name] = (matrix(a), matrix(b) if b is not None else None)
    return out


def _resampled_means(x: np.ndarray, queries: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mean over drawn seeds and the given drawn queries, per resample: [r]."""
    r, seeds = queries.shape[0], x.shape[0]
    if seeds > 1:
        per_query = x[rng.integers(0, seeds, size=(r, seeds))].mean(axis=1)  # [r, Q]
    else:
        per_query = np.broadcast_to(x[0], (r, x.shape[1]))
    return np.take_along_axis(per_query, queries, axis=1).mean(axis=1)


def _bootstrap(parts: dict[str, tuple[np.ndarray, np.ndarray | None]], resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stats = np.zeros(resamples)
    for start in range(0, resamples, _BLOCK):
        r = min(_BLOCK, resamples - start)
        for a, b in parts.values():
            queries = rng.integers(0, a.shape[1], size=(r, a.shape[1]))  # one draw for both: paired
            value = _resampled_means(a, queries, rng)
            if b is not None:
                value = value - _resampled_means(b, queries, rng)
            stats[start: start + r] += value / len(parts)
    return stats


def _check(level: float, resamples: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100, got {resamples}")


def paired_difference(a: list[Run], b: list[Run], level: float = LEVEL, resamples: int = RESAMPLES,
                      seed: int = 0) -> Difference:
    """A − B with its bootstrap interval (see the module docstring); deterministic for a given `seed`."""
    _check(level, resamples)
    parts = _matrices(a, b)
    delta = float(np.mean([pa.mean() - pb.mean() for pa, pb in parts.values()]))
    stats = _bootstrap(parts, resamples, seed)
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    p = min(1.0, 2 * min(float(np.mean(stats <= 0)), float(np.mean(stats >= 0))))
    return Difference(delta, float(low), float(high), level, p, sum(pa.shape[1] for pa, _ in parts.values()),
                      len(a), len(b))


def mean_interval(runs: list[Run], level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """The mean score of one system with its bootstrap interval over queries (and seeds): for error bars."""
    _check(level, resamples)
    parts = _matrices(runs, None)
    stats = _bootstrap(parts, resamples, seed)
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    mean = float(np.mean([pa.mean() for pa, _ in parts.values()]))
    return Estimate(mean, float(low), float(high), level, sum(pa.shape[1] for pa, _ in parts.values()), len(runs))
