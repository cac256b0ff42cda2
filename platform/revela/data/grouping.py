"""Chunks -> groups of exactly B chunks, the unit that in-batch attention sees at once.

Groups never mix sources or kinds: chunks are partitioned by (source, kind) first, in order of first
appearance, and each partition is grouped on its own (the paper builds its mixed-domain sets from
per-corpus batches, and prose/code groups are trained with different settings).

Strategies (each yields full groups plus a leftover of fewer than B chunks per partition):
- `adjacent`, the paper's construction: documents are taken in corpus order in windows of
  `docs_per_window`; each window's chunks are interleaved round-robin (d1c1, d2c1, ..., d1c2, ...), the
  windows are concatenated and cut sequentially into groups of B. Chunks of one document and of its
  neighbours in the corpus (sibling files, consecutive records) therefore share groups.
- `bm25`: seeds are visited in a seeded random order; each unused seed takes its B-1 best BM25
  neighbours (bm25s, English stopwords, Snowball stemmer) among the chunks not yet used, so no chunk is
  reused within an epoch. With `bm25_reuse=True` neighbours may already be used (every chunk still seeds
  at most once, and only chunks not yet placed seed). When fewer than B-1 unused chunks share any term
  with the seed, the group is filled from the remaining unused chunks in seeded order (counted as
  `bm25_zero_score_fill`). Each group scores the whole partition, so this is O(n^2 / B) per partition:
  fine up to ~10^5 chunks; split bigger corpora into several sources.
- `random`, the control: a seeded permutation cut into groups.

Short final group (the leftover of each partition), `short_group`:
- `drop` (default): its chunks are not written; counted as `dropped_chunks`.
- `pad`: filled up to B with other chunks of the same partition drawn in seeded order (those chunks then
  appear twice in the epoch; counted as `padded_chunks`). A partition with fewer than B chunks in all
  cannot be padded without duplicates inside one group, so it is dropped and counted.
Chunks inside every group are shuffled with a seed, and the final list of groups is shuffled with the same
seed so that consecutive groups come from different parts of the corpus. Fewer than B chunks in total is a
`GroupingError`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from revela.data.chunking import Chunk
from revela.data.config import MIN_GROUP_SIZE

Strategy = Literal["adjacent", "bm25", "random"]
STRATEGIES: tuple[str, ...] = ("adjacent", "bm25", "random")


class GroupingError(ValueError):
    """Grouping cannot produce a single group (e.g. fewer chunks than the group size)."""


@dataclass(frozen=True)
class Group:
    chunks: tuple[Chunk, ...]

    @property
    def source(self) -> str:
        return self.chunks[0].source

    @property
    def kind(self) -> str:
        return self.chunks[0].kind

    @property
    def group_id(self) -> str:
        """Content-derived, so the same chunks in the same order always get the same id."""
        return hashlib.sha1("\x1f".join(c.id for c in self.chunks).encode()).hexdigest()[:16]


@dataclass
class GroupingReport:
    strategy: str
    group_size: int
    seed: int
    short_group: str
    groups: int = 0
    chunks_in: int = 0
    dropped_chunks: int = 0
    padded_chunks: int = 0
    reused_chunks: int = 0
    bm25_zero_score_fill: int = 0
    partitions: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _rng(seed: int, *salt: object) -> random.Random:
    """Independent, reproducible stream per (seed, salt) (str hashing is salted per process, sha1 is not)."""
    digest = hashlib.sha1(repr((seed,) + salt).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _cut(order: list[int], size: int) -> tuple[list[list[int]], list[int]]:
    full = len(order) - len(order) % size
    return [order[i : i + size] for i in range(0, full, size)], order[full:]


def adjacent_groups(chunks: Sequence[Chunk], size: int, docs_per_window: int = 2) -> tuple[list[list[int]], list[int]]:
    by_doc: dict[str, list[int]] = {}
    for i, c in enumerate(chunks):
        by_doc.setdefault(c.doc_id, []).append(i)
    docs = list(by_doc.values())
    order: list[int] = []
    for w in range(0, len(docs), docs_per_window):
        window = docs[w : w + docs_per_window]
        for k in range(max(len(d) for d in window)):
            order.extend(d[k] for d in window if k < len(d))
    return _cut(order, size)


def random_groups(chunks: Sequence[Chunk], size: int, seed: int) -> tuple[list[list[int]], list[int]]:
    order = list(range(len(chunks)))
    _rng(seed, "random").shuffle(order)
    return _cut(order, size)


def bm25_groups(chunks: Sequence[Chunk], size: int, seed: int, reuse: bool = False) -> tuple[list[list[int]], list[int], dict[str, int]]:
    import bm25s
    import Stemmer

    n = len(chunks)
    tokenized = bm25s.tokenize([c.text for c in chunks], stopwords="en", stemmer=Stemmer.Stemmer("english"),
                               show_progress=False)
    index = bm25s.BM25()
    index.index(tokenized, show_progress=False)
    seeds = list(range(n))
    _rng(seed, "bm25").shuffle(seeds)
    rank = np.empty(n, dtype=np.int64)
    rank[np.asarray(seeds)] = np.arange(n)  # seeded tie-break order
    used = np.zeros(n, dtype=bool)
    placed = np.zeros(n, dtype=bool)
    groups: list[list[int]] = []
    stats = {"bm25_zero_score_fill": 0, "reused_chunks": 0}
    for s in seeds:
        if (used if not reuse else placed)[s]:
            continue
        pool = ~used if not reuse else np.ones(n, dtype=bool)
        pool[s] = False
        if pool.sum() < size - 1:
            break
        query = sorted(set(tokenized.ids[s]))
        scores = index.get_scores(query) if query else np.zeros(n, dtype=np.float32)
        scores = np.where(pool, scores, -np.inf)
        positive = np.flatnonzero(scores > 0)
        # best first; equal scores in seeded order
        best = positive[np.lexsort((rank[positive], -scores[positive]))][: size - 1]
        members = [s, *best.tolist()]
        if len(members) < size:
            rest = np.flatnonzero(pool & (scores <= 0))
            fill = rest[np.argsort(rank[rest])][: size - len(members)]
            stats["bm25_zero_score_fill"] += len(fill)
            members.extend(fill.tolist())
        stats["reused_chunks"] += int(used[members].sum())
        used[members] = True
        placed[members] = True
        groups.append(members)
    leftover = [i for i in seeds if not placed[i]]
    return groups, leftover, stats


def _pad(group: list[int], partition_size: int, size: int, seed: int, salt: str) -> list[int]:
    members = set(group)
    others = [i for i in range(partition_size) if i not in members]
    _rng(seed, "pad", salt).shuffle(others)
    return group + others[: size - len(group)]


def make_groups(
    chunks: Sequence[Chunk],
    group_size: int,
    strategy: Strategy = "adjacent",
    seed: int = 42,
    *,
    short_group: Literal["drop", "pad"] = "drop",
    docs_per_window: int = 2,
    bm25_reuse: bool = False,
) -> tuple[list[Group], GroupingReport]:
    """Group `chunks` (rules in the module docstring); returns the shuffled groups and a report."""
    if strategy not in STRATEGIES:
        raise GroupingError(f"unknown grouping {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if group_size < MIN_GROUP_SIZE:
        raise GroupingError(f"group_size must be >= {MIN_GROUP_SIZE} (each chunk's Sim ranks the other chunks of its "
                            f"group; at B=2 there is only one), got {group_size}")
    if len(chunks) < group_size:
        raise GroupingError(
            f"only {len(chunks)} chunks in total, fewer than one group of B={group_size}; "
            "add more text or lower the group size (--group-size, data.group_size)"
        )
    report = GroupingReport(strategy=strategy, group_size=group_size, seed=seed, short_group=short_group,
                            chunks_in=len(chunks))
    partitions: dict[tuple[str, str], list[Chunk]] = {}
    for c in chunks:
        partitions.setdefault((c.source, c.kind), []).append(c)

    groups: list[Group] = []
    for (source, kind), part in partitions.items():
        name = f"{source}/{kind}"
        stats: dict[str, int] = {}
        if strategy == "adjacent":
            full, rest = adjacent_groups(part, group_size, docs_per_window)
        elif strategy == "random":
            full, rest = random_groups(part, group_size, seed)
        else:
            full, rest, stats = bm25_groups(part, group_size, seed, reuse=bm25_reuse)
            report.bm25_zero_score_fill += stats["bm25_zero_score_fill"]
            report.reused_chunks += stats["reused_chunks"]
        dropped = padded = 0
        if rest:
            if short_group == "pad" and len(part) >= group_size:
                full.append(_pad(rest, len(part), group_size, seed, name))
                padded = group_size - len(rest)
            else:
                dropped = len(rest)
        report.dropped_chunks += dropped
        report.padded_chunks += padded
        report.partitions[name] = {"chunks": len(part), "groups": len(full), "dropped_chunks": dropped,
                                   "padded_chunks": padded}
        for k, members in enumerate(full):
            members = list(members)
            _rng(seed, "within", name, k).shuffle(members)
            groups.append(Group(tuple(part[i] for i in members)))

    if not groups:
        raise GroupingError(
            f"no partition (source/kind) has {group_size} chunks: "
            + ", ".join(f"{k}={v['chunks']}" for k, v in report.partitions.items())
        )
    _rng(seed, "order").shuffle(groups)
    report.groups = len(groups)
    return groups, report
