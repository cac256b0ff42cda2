"""The sweep config: a base run config, the axes of the grid, and the budget held equal across its cells.

    name: b-by-model                  # the sweep folder: <storage_path>/<name>
    base: ../configs/smoke-cpu.yaml   # run config every trial starts from (relative to this file)
    run: {train: {heldout_groups: 0}} # sections merged over the base for every trial
    datasets: [stdlib-code]           # dev sets every checkpoint is scored on (eval.datasets of each trial)
    budget: {chunks: 4096}            # exactly one of steps, chunks, tokens
    axes:
      group_size: [4, 8, 16, 32]
      retriever:                      # one entry per model; `run` carries what goes with that model
        - {label: minilm, name: all-minilm-l6-v2, run: {model: {objective: {temperature: 0.05}}}}
        - {label: smollm2, name: smollm2-135m, run: {model: {retriever: {pooling: eos, finetune: lora}}}}
      lm: [{label: smollm2, name: smollm2-135m}]
      seeds: [0, 1]                   # optional: lr, grouping, temperature, target_entropy, sim too

Why the budget matters: comparing group sizes at equal optimizer steps gives the larger B more chunks and more
LM tokens; at equal chunks (or tokens) the smaller B takes more steps. They answer different questions, so the
budget is explicit and the same for every cell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from revela.config import Temperature
from revela.configbase import ConfigError, SafeName, StrictModel, apply_overrides, load_yaml, validate
from revela.data.config import MIN_GROUP_SIZE, Grouping

SCALING_AXES = ("group_size", "retriever", "lm", "grouping")
"""Axes a scaling study compares; an early-stopping scheduler must never rank trials across them."""


class DeriveSpec(StrictModel):
    """A smaller model cut from a pretrained one: its first `layers` blocks (embeddings and head kept)."""

    base: str
    layers: int = Field(ge=1)


class ModelChoice(StrictModel):
    label: SafeName
    """Short name used in trial names, tables and plot legends."""
    name: str | None = None
    """Model name or path (offline asset alias, local folder or hub id)."""
    derive: DeriveSpec | None = None
    """Instead of `name`: build a depth-truncated copy of a pretrained model into the sweep folder."""
    run: dict[str, Any] = {}
    """Run-config sections that go with this model (pooling, finetune mode, tau, learning rate, ...)."""

    @model_validator(mode="after")
    def _one_source(self) -> "ModelChoice":
        if (self.name is None) == (self.derive is None):
            raise ValueError(f"model {self.label!r}: give exactly one of `name` or `derive`")
        return self


class Variant(StrictModel):
    """A hand-picked point of a study (the paper's tau, a control, ...): run-config sections merged over the base."""

    label: SafeName
    """Short name used in trial names and tables."""
    run: dict[str, Any] = {}


class Axes(StrictModel):
    group_size: list[int] = Field(min_length=1)
    """B (>= 3): chunks per group. Each B is grouped from the corpus by `revela prepare`, never sliced from another."""
    retriever: list[ModelChoice] = []
    """Empty: the base config's retriever."""
    lm: list[ModelChoice] = []
    """Empty: the base config's LM."""
    seeds: list[int] = []
    """Empty: the base config's train.seed. Several seeds give the report's error bars."""
    lr: list[float] = []
    """train.lr values (an inner search); empty: the base config's."""
    grouping: list[Grouping] = []
    temperature: list[Temperature] = []
    """model.objective.temperature (tau) values, numbers or `auto`; empty: the base config's (or the model choice's)."""
    target_entropy: list[float] = []
    """model.objective.target_entropy values (what `temperature: auto` aims at); empty: the base config's."""
    sim: list[Literal["softmax", "uniform"]] = []
    """model.objective.sim: `uniform` is the no-retriever-signal control; empty: the base config's."""
    variants: list[Variant] = []
    """Hand-picked points instead of a full grid (e.g. tau=1e-4, auto, sim: uniform, grouping: random), each
    crossed with the other axes; empty: none."""

    @field_validator("group_size")
    @classmethod
    def _group_sizes(cls, values: list[int]) -> list[int]:
        bad = [b for b in values if b < MIN_GROUP_SIZE]
        if bad:
            # at B=2 each chunk has one other chunk: Sim over it is always 1, so the retriever gets no gradient
            raise ValueError(f"group sizes must be >= {MIN_GROUP_SIZE} (at B=2 the retriever's softmax has one entry "
                             f"and no gradient), got {bad}")
        return values

    @field_validator("lr")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if any(v <= 0 for v in values):
            raise ValueError(f"values must be > 0, got {values}")
        return values

    @field_validator("target_entropy")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        if any(not 0 < v < 1 for v in values):
            raise ValueError(f"target entropies are fractions of ln(B-1), strictly between 0 and 1, got {values}")
        return values

    @model_validator(mode="after")
    def _unique(self) -> "Axes":
        for axis in ("group_size", "seeds", "lr", "grouping", "temperature", "target_entropy", "sim"):
            values = getattr(self, axis)
            if len(set(values)) != len(values):
                raise ValueError(f"axes.{axis} lists a value twice: {values}")
        for axis in ("retriever", "lm", "variants"):
            labels = [c.label for c in getattr(self, axis)]
            if len(set(labels)) != len(labels):
                raise ValueError(f"axes.{axis}: two entries share a label: {labels}")
        return self


class Budget(StrictModel):
    """What is held equal across cells; exactly one is set."""

    steps: int | None = Field(None, ge=1)
    """Optimizer steps."""
    chunks: int | None = Field(None, ge=1)
    """Chunks seen: steps x B x groups per step."""
    tokens: int | None = Field(None, ge=1)
    """LM tokens seen, estimated from the prepared chunks' mean length; the trial reports the tokens really seen."""

    @model_validator(mode="after")
    def _exactly_one(self) -> "Budget":
        given = [k for k in ("steps", "chunks", "tokens") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of steps, chunks or tokens (got {given or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("steps", "chunks", "tokens") if getattr(self, k) is not None)

    @property
    def value(self) -> int:
        return getattr(self, self.kind)


class Scheduler(StrictModel):
    kind: Literal["fifo", "asha"] = "fifo"
    """fifo: every cell runs its whole budget (the default, and the only choice across a scaling grid).
    asha: early stopping, for inner searches only (learning rate, tau, seeds), ranked on the dev metric."""
    grace_period: int = Field(1, ge=1)
    """asha: optimizer steps before a trial can be stopped."""
    reduction_factor: float = Field(2.0, gt=1)


class SweepConfig(StrictModel):
    name: SafeName
    base: str | None = None
    """Run-config YAML every trial starts from, relative to the sweep file; None: the embedded defaults."""
    run: dict[str, Any] = {}
    """Run-config sections merged over the base for every trial."""
    datasets: list[str] = Field(min_length=1)
    """Dev sets (BEIR directories or suite names) scored on every checkpoint and for the untrained backbones."""
    axes: Axes
    budget: Budget
    checkpoints: int = Field(2, ge=1)
    """Evenly spaced checkpoints (each scored on the dev sets) per trial, whatever its step count."""
    chunks_per_forward: int | None = Field(None, ge=1)
    """None: every cell keeps the base config's train.groups_per_forward. Set: each cell runs
    G = max(1, chunks_per_forward // B) groups per forward, so every forward holds about the same number of chunks
    whatever B. GPU memory tracks chunks per forward (docs/gpu.md), so a fixed G sized for the smallest B runs out of
    memory at the largest; with this the budget's steps follow G as well (chunks per step = G x B x workers x accum)."""
    scheduler: Scheduler = Scheduler()
    storage_path: str = "runs/sweeps"
    ray_address: str | None = None
    """None: the base config's ray.address (None there too: an embedded local Ray)."""
    max_concurrent_trials: int | None = Field(None, ge=1)
    """None: as many as the cluster's GPUs (or CPUs, on CPU clusters) hold at once."""
    max_trial_failures: int = Field(1, ge=0)
    """Tune retries of a failed trial (it resumes from its last checkpoint)."""
    warmup_fraction: float | None = Field(0.1, ge=0, lt=1)
    """Each trial warms its learning rate up over this fraction of its own optimizer steps (train.warmup_steps =
    round(fraction x steps), fewer than its steps), so every cell follows the same schedule shape whatever its step
    count. None: every trial keeps the base's fixed train.warmup_steps, and a cell with no more steps than that (whose
    learning rate would never reach train.lr) is refused at planning."""

    @model_validator(mode="after")
    def _one_warmup_rule(self) -> "SweepConfig":
        if self.warmup_fraction is None:
            return self
        sections = {"run": self.run} | {f"axes.{axis}[{c.label}].run": c.run
                                         for axis in ("retriever", "lm") for c in getattr(self.axes, axis)}
        for where, run in sections.items():
            if isinstance(run.get("train"), dict) and "warmup_steps" in run["train"]:
                raise ValueError(
                    f"{where}.train.warmup_steps and warmup_fraction={self.warmup_fraction:g} both set each trial's "
                    "warmup; keep one (warmup_fraction: null keeps a fixed number of warmup steps in every cell)")
        return self

    @model_validator(mode="after")
    def _scheduler_only_for_inner_searches(self) -> "SweepConfig":
        if self.scheduler.kind == "fifo":
            return self
        compared = [a for a in SCALING_AXES if len(getattr(self.axes, a)) > 1]
        if compared:
            raise ValueError(
                f"scheduler.kind={self.scheduler.kind} would stop cells of the scaling grid early "
                f"(axes {compared} have several values); run the grid with fifo, and use asha only for an inner "
                "search (lr, temperature) inside one cell")
        return self


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> tuple[SweepConfig, Path]:
    """The validated sweep config and the folder relative paths in it are resolved against."""
    path = Path(path)
    data = apply_overrides(load_yaml(path), overrides or [])
    return validate(SweepConfig, data, str(path)), path.resolve().parent


def base_run_dict(sweep: SweepConfig, base_dir: Path) -> dict:
    """The base run config as a plain dict: embedded defaults, then the base YAML, then the sweep's `run`."""
    from revela.config import RunConfig
    from revela.configbase import deep_merge

    data = RunConfig().model_dump()
    if sweep.base:
        base = Path(sweep.base) if Path(sweep.base).is_absolute() else base_dir / sweep.base
        data = deep_merge(data, load_yaml(base))
    data = deep_merge(data, sweep.run)
    metric = data.get("eval", {}).get("select_best_by", "")
    if not (metric.startswith("dev_") or "/" in metric):
        raise ConfigError(f"eval.select_best_by={metric!r}: a sweep ranks checkpoints on a dev retrieval metric "
                          "(dev_ndcg_at_10, <dataset>/ndcg_at_10, ...), never on the LM loss")
    return data
