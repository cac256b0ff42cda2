"""What an evaluation scores and how, as one validated model.

    from revela.evaluation.run import evaluate
    from revela.evaluation.settings import EvalSettings

    settings = EvalSettings.of(model="all-minilm-l6-v2", datasets=["stdlib-code"], output="out/minilm.json", bm25=True)
    report = evaluate(settings)

`ScoringSettings` holds the fields a training run's `eval:` section shares with `revela evaluate` (the dev sets, the
query sample, the batch size and the lengths); `revela.config.EvalConfig` derives from it. `EvalSettings.of` refuses
bad settings with one line naming each bad field (`SettingsError`, a ValueError); `revela evaluate` turns the field
names into its flags.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from revela.configbase import StrictModel, field_problems
from revela.evaluation.checks import check_output

Encoder = Literal["auto", "local", "ray"]
EXACT_INDEX = "Flat"
"""FAISS's exact inner-product index (revela.evaluation.search.EXACT, named here without importing FAISS)."""


def _paths_as_text(values):
    if isinstance(values, (list, tuple)):
        return [os.fspath(v) if isinstance(v, os.PathLike) else v for v in values]
    return values


Count = Annotated[int, Field(strict=True, ge=1)]
"""A positive integer; strict: True or "8" is refused, not read as 1 or 8."""
Tokens = Annotated[int, Field(strict=True, ge=2)]
"""A token length: at least one special token and one real token."""


class ScoringSettings(StrictModel):
    """How a retriever is scored on retrieval sets: shared by `revela evaluate` (EvalSettings) and the dev sets a
    training run scores its checkpoints on (revela.config.EvalConfig)."""

    datasets: Annotated[list[str], BeforeValidator(_paths_as_text)] = []
    """BEIR-layout directories or offline suite names (stdlib-code, pyfaq)."""
    max_queries: Count | None = None
    """Queries sampled per dataset (a seeded sample; the corpus stays whole). None: every query."""
    batch_size: Count = 32
    """Texts per forward pass."""
    max_length: Tokens | None = None
    """Query tokens at evaluation; None: as trained."""
    passage_max_length: Tokens | None = None
    """Passage tokens at evaluation; None: the length the retriever declares (its sentence-transformers
    max_seq_length, recorded in every checkpoint), else 512 as the authors evaluate decoders (revela.evalprotocol)."""


class EvalSettings(ScoringSettings):
    """One evaluation: the model and baselines, the datasets, the search and where the report goes."""

    model: str | None = None
    """An offline asset alias, a model folder, a training checkpoint or an export (revela.modelfiles); None with
    bm25: a BM25-only report."""
    bm25: bool = False
    """Add the BM25 baselines (plain and identifier-split)."""
    baseline_model: str | None = None
    """The untrained backbone, scored under the model's protocol and under its own."""
    protocol: dict | None = None
    """EncodingProtocol fields that replace the model's own protocol."""
    output: Path | None = None
    """The report JSON; run files go to <stem>.runs/. None: nothing written."""
    split: str = "test"
    """Qrels split."""
    batch_size: Count = 64  # more than a training run's dev sets: nothing else shares the device
    k: Count = 100
    """Documents retrieved per query."""
    index: str = EXACT_INDEX
    """FAISS index factory string."""
    index_params: str | None = None
    """FAISS search parameters, e.g. nprobe=32."""
    shard_size: Count | None = None
    """Documents per search shard (None: one index)."""
    encoder: Encoder = "auto"
    """local: in this process; ray: an actor pool; auto: ray when this process already runs Ray."""
    num_actors: Count | None = None
    """Encoder actors for encoder=ray."""
    dtype: str | None = None
    """Weights dtype to load the model in (None: as saved)."""
    ignore_identical_ids: bool = True
    """Drop a retrieved document whose id is the query's (BEIR's convention)."""
    eval_dir: Path | None = None
    """Where suite datasets are built on first use (None: $REVELA_CACHE/evals or <repo>/.cache/evals)."""

    @field_validator("datasets")
    @classmethod
    def _some_dataset(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one dataset")
        return value

    @field_validator("output")
    @classmethod
    def _usable_output(cls, value: Path | None) -> Path | None:
        check_output(value)
        return value

    @model_validator(mode="after")
    def _something_to_score(self) -> "EvalSettings":
        if self.model is None and not self.bm25:
            raise ValueError("nothing to evaluate: give a model, or bm25=True for a BM25-only report")
        return self

    @classmethod
    def of(cls, **values) -> "EvalSettings":
        """Validated settings, or `SettingsError`: one line naming each bad field."""
        try:
            return cls(**values)
        except ValidationError as err:
            raise SettingsError.of(err) from None


class SettingsError(ValueError):
    """Invalid evaluation settings; `problems` is [(field, message)], field "" for the settings as a whole."""

    def __init__(self, problems: list[tuple[str, str]], flags: dict[str, str] | None = None):
        self.problems = problems
        parts = [f"{(flags or {}).get(field, field)}: {message}" if field else message for field, message in problems]
        super().__init__(("" if flags is not None else "evaluation settings: ") + "; ".join(parts))

    @classmethod
    def of(cls, err: ValidationError) -> "SettingsError":
        return cls(field_problems(err, unknown="unknown setting"))

    def with_flags(self, flags: dict[str, str]) -> "SettingsError":
        """The same problems, each field named by its command-line flag (a field without a flag keeps its name)."""
        return SettingsError(self.problems, flags)
