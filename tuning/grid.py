"""Expand a sweep config into its trials: one resolved run config per cell of the grid.

Trial names are stable (they name each trial's Train run, which resumes by name): `b<B>-<retriever>-<lm>`, then
`-<variant>`, `-<grouping>`, `-tau<tau>` (`-tauauto`), `-h<target entropy>`, `-<sim>`, `-lr<lr>` for the axes the
sweep lists, then `-s<seed>`.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from revela.config import RunConfig
from revela.configbase import ConfigError, check_safe_name, deep_merge, validate
from revela.tuning.budget import steps_for, warmup_steps_for
from revela.tuning.config import ModelChoice, SweepConfig

RUNS_DIR, DATA_DIR, MODELS_DIR = "runs", "data", "models"


@dataclass
class Trial:
    name: str
    params: dict
    """The cell's coordinates: group_size, retriever, lm, seed, lr, grouping, temperature, target_entropy, sim,
    variant (labels for models and variants)."""
    run: dict
    """The trial's run config (RunConfig fields) once `apply_budget` has set its steps."""
    data_key: str
    """Folder under <sweep>/data/ holding this cell's prepared groups (shared by every cell with the same data)."""
    data_config: dict = field(default_factory=dict)
    """The DataConfig `revela prepare` builds `data_key` from."""


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name.rstrip("/")).name).strip("-.")[:40] or "model"


def model_location(choice: ModelChoice, sweep_dir: Path) -> str:
    return choice.name if choice.name is not None else str(sweep_dir / MODELS_DIR / choice.label)


def _number(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:g}".replace("+", "")


def trial_name(params: dict, axes) -> str:
    parts = [f"b{params['group_size']}", params["retriever"], params["lm"]]
    if axes.variants:
        parts.append(params["variant"])
    if axes.grouping:
        parts.append(params["grouping"])
    if axes.temperature:
        parts.append(f"tau{_number(params['temperature'])}")
    if axes.target_entropy:
        parts.append(f"h{_number(params['target_entropy'])}")
    if axes.sim:
        parts.append(params["sim"])
    if axes.lr:
        parts.append(f"lr{_number(params['lr'])}")
    parts.append(f"s{params['seed']}")
    return check_safe_name("-".join(parts))


def _data_config(run: dict, trial: str) -> dict:
    from revela.train import default_sources

    data = dict(run["data"])
    if data.get("shards"):
        raise ConfigError(f"trial {trial}: data.shards fixes one group size; a sweep groups the corpus once per B "
                          "with `revela prepare`: give data.sources (or neither, for the embedded corpus)")
    data["sources"] = data.get("sources") or default_sources()
    data["tokenizer"] = data.get("tokenizer") or run["model"]["lm"]["name"]  # cap chunks with the LM's tokenizer
    return data


def _data_key(data: dict) -> str:
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
    return f"b{data['group_size']}-{data['grouping']}-{digest}"


def expand(sweep: SweepConfig, base: dict, sweep_dir: Path) -> list[Trial]:
    """Every cell of the grid, B varying slowest; run configs still without their budgeted step count."""
    axes = sweep.axes
    trials = []
    for group_size, r_choice, l_choice, variant, grouping, tau, target, sim, lr, seed in itertools.product(
            axes.group_size, axes.retriever or [None], axes.lm or [None], axes.variants or [None],
            axes.grouping or [None], axes.temperature or [None], axes.target_entropy or [None], axes.sim or [None],
            axes.lr or [None], axes.seeds or [None]):
        run = copy.deepcopy(base)
        for choice, part in ((r_choice, "retriever"), (l_choice, "lm")):
            if choice is not None:
                run = deep_merge(run, choice.run)
                run["model"][part]["name"] = model_location(choice, sweep_dir)
        if variant is not None:
            run = deep_merge(run, variant.run)
        run["data"]["group_size"] = group_size
        if sweep.chunks_per_forward:
            run["train"]["groups_per_forward"] = max(1, sweep.chunks_per_forward // group_size)
        for value, section, key in ((grouping, "data", "grouping"), (seed, "train", "seed"), (lr, "train", "lr")):
            if value is not None:
                run[section][key] = value
        for value, key in ((tau, "temperature"), (target, "target_entropy"), (sim, "sim")):
            if value is not None:
                run["model"]["objective"][key] = value
        params = {"group_size": group_size,
                  "retriever": r_choice.label if r_choice else slug(run["model"]["retriever"]["name"]),
                  "lm": l_choice.label if l_choice else slug(run["model"]["lm"]["name"]),
                  "seed": run["train"]["seed"], "lr": run["train"]["lr"], "grouping": run["data"]["grouping"],
                  "temperature": run["model"]["objective"]["temperature"],
                  "target_entropy": run["model"]["objective"]["target_entropy"],
                  "sim": run["model"]["objective"]["sim"], "variant": variant.label if variant else None}
        name = trial_name(params, axes)
        data = _data_config(run, name)
        key = _data_key(data)
        run["name"] = name
        run["data"] = {**run["data"], "shards": str(sweep_dir / DATA_DIR / key), "sources": []}
        run["eval"]["datasets"] = list(sweep.datasets)
        run["ray"]["storage_path"] = str(sweep_dir / RUNS_DIR)
        if sweep.ray_address is not None:
            run["ray"]["address"] = sweep.ray_address
        trials.append(Trial(name, params, run, key, data))
    names = [t.name for t in trials]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep {sweep.name}: two cells get the same trial name; give the models distinct labels")
    return trials


def apply_budget(trials: list[Trial], sweep: SweepConfig, tokens_per_chunk: dict[str, float]) -> list[Trial]:
    """Set each trial's steps from the budget, its warmup and its evenly spaced checkpoints; validate its run
    config."""
    for trial in trials:
        steps = steps_for(sweep.budget, trial.run, tokens_per_chunk.get(trial.data_key), trial.name)
        train = trial.run["train"]
        train["max_steps"] = steps
        train["checkpoint_every"] = max(1, steps // sweep.checkpoints)
        train["warmup_steps"] = warmup_steps_for(steps, sweep.warmup_fraction, train["warmup_steps"], trial.name)
        trial.params["steps"] = steps
        trial.params["warmup_steps"] = train["warmup_steps"]
        validate(RunConfig, trial.run, f"sweep {sweep.name}, trial {trial.name}")
    return trials
