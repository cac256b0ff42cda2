"""Config for turning corpora into chunk groups and streaming them."""

from __future__ import annotations

from typing import Literal

from revela.configbase import StrictModel


class DataConfig(StrictModel):
    shards: str | None = None
    """Directory written by `revela prepare` (Parquet shards + manifest). None: build from `sources`."""
    sources: list[str] = []
    """Corpus paths prepared on the fly when `shards` is not given (JSONL, Parquet, text/code trees, HF dataset)."""
    group_size: int = 16
    grouping: Literal["adjacent", "bm25", "random"] = "adjacent"
    kind: Literal["prose", "code", "auto"] = "auto"
    max_words: int = 120
    max_tokens: int = 160
    seed: int = 42
