"""Config for turning corpora into chunk groups and streaming them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from revela.configbase import StrictModel

Grouping = Literal["adjacent", "bm25", "random"]
KindChoice = Literal["prose", "code", "auto"]
MIN_GROUP_SIZE = 3
"""Chunks per group (B): each chunk's Sim row is a softmax over the B-1 other chunks of its group (docs/method.md),
so at B = 2 it has one entry, always 1, and the retriever gets no gradient."""


class DataConfig(StrictModel):
    shards: str | None = None
    """Directory written by `revela prepare` (Parquet shards + manifest). None: build from `sources`."""
    sources: list[str] = []
    """Corpus paths prepared on the fly when `shards` is not given (JSONL, Parquet, text/code trees, HF dataset)."""
    group_size: int = 16
    """B, chunks per group: at least MIN_GROUP_SIZE."""
    grouping: Grouping = "adjacent"
    kind: KindChoice = "auto"
    """auto: files by extension (code extensions -> code, everything else prose); records (JSONL/Parquet/HF) by
    their `kind` field, else their `language` field (a programming language -> code), else prose (counted and
    reported by prepare)."""
    max_words: int = Field(120, ge=1)
    """Prose chunks hold complete sentences and at most this many words (the paper's rule)."""
    max_tokens: int = Field(160, ge=8)
    """Cap on a chunk's own token count (no prefix, no special tokens); see revela.data.chunking."""
    seed: int = 42
    min_words: int = Field(4, ge=1)
    """Chunks with fewer words are dropped (counted as short_chunk); a document with no chunk left is too_short."""
    tokenizer: str | None = None
    """Tokenizer (name or path) whose counts enforce max_tokens; None: a conservative words-based estimate."""
    short_group: Literal["drop", "pad"] = "drop"
    """The leftover (< group_size) chunks of each source/kind partition: dropped, or padded with other
    chunks of the same partition (those are then reused and reported as padded_chunks)."""
    docs_per_window: int = Field(2, ge=1)
    """adjacent: how many consecutive documents are interleaved before cutting groups."""
    bm25_reuse: bool = False
    """bm25: allow a chunk to appear in several groups of one epoch (each chunk still seeds at most once)."""
    on_bad_record: Literal["error", "skip"] = "error"
    """Malformed JSONL, missing text, non-UTF-8 records: stop with file:line, or skip and count."""
    exclude_eval: list[str] = []
    """Evaluation sets built with `revela build-evals --from-corpus ... --holdout F` (one folder, or a list):
    the documents they hold out are skipped (counted as eval_holdout), so their scores are not measured on text
    the retriever trained on."""
    rows_per_shard: int = Field(1024, ge=1)
    stream_actors: int = Field(1, ge=1)
    """Ray Data actors reading and tokenizing groups for training (half a CPU each): raise it when a fast GPU
    waits for data (metrics: data_wait_fraction)."""

    @field_validator("group_size")
    @classmethod
    def _retriever_has_something_to_rank(cls, value: int) -> int:
        if value < MIN_GROUP_SIZE:
            raise ValueError(f"must be at least {MIN_GROUP_SIZE}: each chunk's Sim is a softmax over the B-1 other "
                             "chunks of its group, so at B=2 it is always 1 and the retriever learns nothing")
        return value

    @field_validator("exclude_eval", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, str) else value
