"""`revela sweep`: run a sweep config as a Ray Tune experiment, one trial (one Ray Train fit) per grid cell.

Layout of a sweep folder, `<storage_path>/<name>/`:

    sweep.json           the plan: config hash, the resolved run config of every trial, backbone score files
                         (paths inside the folder stored as ${sweep}/..., see revela.tuning.folder)
    tune/                the Tune experiment (restored on re-runs)
    runs/<trial>/        each trial's Train run: checkpoints, metrics.jsonl, dev_scores.jsonl, report.json,
                         and revela_trial.json (the trial's record, what `revela report` reads)
    data/b<B>-.../       the groups of each size, prepared once (`revela prepare`, cached by input hash)
    models/<label>/      derived (depth-truncated) models, when the sweep asks for them
    baselines/           the untrained backbones' dev scores

Re-running the same command continues the sweep: the Tune experiment is restored, finished trials are kept and
unfinished ones resume from their runs' last checkpoints. A changed config under the same name (or a folder moved
or copied since it ran) is refused unless `mode` is "resume" (a fresh Tune experiment over the new grid; trials whose
runs finished with an unchanged config are reused, changed runs are continued as `revela train --resume` would) or
"overwrite". Everything is validated before either deletes anything (`check_sweep_dir`, `check_plan`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Literal

from revela.tuning.config import SweepConfig, base_run_dict, load_sweep
from revela.train import write_json
from revela.tuning.folder import FOLDER_KEY, plan_folder, portable, same_folder
from revela.tuning.grid import MODELS_DIR, Trial, apply_budget, expand
from revela.config import RunConfig
from revela.tuning.trial import SWEEP_FILE, run_trial, trial_hash, tune_metrics_keys

log = logging.getLogger(__name__)

TUNE_DIR = "tune"
TRIAL_DRIVER_CPU = 0.01
"""CPU reserved for each trial's own function (it only drives the Train run); a whole CPU would starve small
machines and Tune refuses 0."""
Mode = Literal["auto", "resume", "overwrite"]


class SweepConflictError(RuntimeError):
    """The sweep name is taken by a different config."""


class SweepResourceError(RuntimeError):
    """The cluster cannot hold even one trial: it would wait forever rather than fail."""


def sweep_hash(sweep: SweepConfig, base: dict) -> str:
    """What makes two sweeps the same: the grid, the budget, the dev sets and every trial's base settings."""
    data = sweep.model_dump(exclude={"storage_path", "ray_address", "max_concurrent_trials", "max_trial_failures"})
    if data["chunks_per_forward"] is None:  # unset: the same hash as before the setting existed
        del data["chunks_per_forward"]
    return hashlib.sha256(json.dumps({"sweep": data, "base": base}, sort_keys=True).encode()).hexdigest()[:16]


def sweep_folder(sweep: SweepConfig) -> Path:
    return Path(sweep.storage_path).absolute() / sweep.name


def check_sweep_dir(sweep: SweepConfig, digest: str, mode: Mode) -> str | None:
    """Refuse a name taken by a different config (or a folder moved since it ran) without touching anything; returns
    what `claim_sweep_dir` will delete: "sweep" (--overwrite), "tune" (go on with a changed grid) or None."""
    sweep_dir = sweep_folder(sweep)
    record = sweep_dir / SWEEP_FILE
    if not record.is_file():
        return None
    if mode == "overwrite":
        return "sweep"
    previous = json.loads(record.read_text())
    written_in = plan_folder(previous) or str(sweep_dir)
    moved = not same_folder(written_in, sweep_dir)
    if previous["config_hash"] == digest and not moved:
        return None
    if mode != "resume":
        if moved:
            raise SweepConflictError(
                f"sweep {sweep.name!r} in {sweep_dir} was run in {written_in} (the folder was moved or "
                "copied); pass --resume to continue it here (finished trials are kept), or --overwrite to start over")
        raise SweepConflictError(
            f"sweep {sweep.name!r} in {sweep_dir} was started with a different config; pass --resume to go on "
            "with this config (finished trials whose runs are unchanged are kept), --overwrite to start over, "
            "or choose another name")
    return "tune"  # the grid changed (or the folder moved): a fresh Tune experiment


def claim_sweep_dir(sweep: SweepConfig, digest: str, mode: Mode) -> Path:
    """Delete what `mode` asks for and create the folder. `run_sweep` calls it only once everything is validated."""
    action = check_sweep_dir(sweep, digest, mode)
    sweep_dir = sweep_folder(sweep)
    if action == "sweep":
        shutil.rmtree(sweep_dir)
    elif action == "tune":
        shutil.rmtree(sweep_dir / TUNE_DIR, ignore_errors=True)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return sweep_dir


def check_plan(sweep: SweepConfig, base: dict, sweep_dir: Path) -> list[Trial]:
    """Everything a sweep needs that can be checked without writing anything: the grid and every trial's run config
    (steps and warmup too, unless a tokens budget needs the prepared chunks first), every model name and derive spec,
    the corpus and the dev sets. Errors are one line naming the key."""
    from revela.configbase import ConfigError, validate
    from revela.data.ingest import IngestError, resolve_sources
    from revela.tuning.models import check_model_choices
    from revela.tuning.prepare import check_dev_sets

    trials = expand(sweep, base, sweep_dir)
    if sweep.budget.kind == "tokens":
        for t in trials:
            validate(RunConfig, t.run, f"sweep {sweep.name}, trial {t.name}")
    else:
        apply_budget(copy.deepcopy(trials), sweep, {})
    check_model_choices(sweep, trials, sweep_dir / MODELS_DIR)
    for sources in {tuple(t.data_config["sources"]) for t in trials}:
        try:
            resolve_sources(list(sources))
        except IngestError as e:
            raise ConfigError(f"data.sources: {e}") from None
    check_dev_sets(sweep.datasets)
    return trials


def plan_trials(sweep: SweepConfig, base: dict, sweep_dir: Path) -> tuple[list[Trial], dict]:
    """Expand the grid, build what the trials share (models, groups per B) and fix each trial's steps."""
    from revela.tuning.budget import lm_tokens_per_chunk
    from revela.tuning.prepare import derive_models, prepare_groups

    trials = expand(sweep, base, sweep_dir)
    derive_models(sweep, sweep_dir)
    data = prepare_groups(trials, sweep_dir)
    tokens = {}
    if sweep.budget.kind == "tokens":
        for t in trials:
            lm = t.run["model"]["lm"]
            tokens.setdefault(t.data_key, lm_tokens_per_chunk(data[t.data_key]["chunk_tokens_mean"], lm["name"],
                                                              lm["max_length"]))
    return apply_budget(trials, sweep, tokens), data


def trial_parts(run: dict) -> dict[str, dict[str, float]]:
    """What one trial holds at once, part by part: its training run's Train workers, data stream actors and
    evaluation task (`revela.train.run_resources`), and the trial's own function, which drives the run."""
    from revela.train import run_resources

    return {**run_resources(RunConfig.model_validate(run)), "trial_driver": {"CPU": TRIAL_DRIVER_CPU, "GPU": 0.0}}


def trial_resources(run: dict) -> dict[str, float]:
    """What one trial holds at once, in all: {"CPU": n, "GPU": n}."""
    from revela.train import total_resources

    return total_resources(trial_parts(run))


def max_concurrent(trials: list[Trial], cluster: dict[str, float], asked: int | None) -> int:
    if asked:
        return asked
    need = {k: max(trial_resources(t.run)[k] for t in trials) for k in ("CPU", "GPU")}
    fits = [math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
    n = min(fits)
    if n < 1:
        raise SweepResourceError(
            f"one trial needs {need['CPU']:g} CPUs and {need['GPU']:g} GPUs, the cluster has "
            f"{cluster.get('CPU', 0):g} and {cluster.get('GPU', 0):g}; it would never start. Give workers fewer "
            "CPUs (ray.cpus_per_worker), start Ray with more logical CPUs, or add nodes")
    return min(n, len(trials))


def build_scheduler(sweep: SweepConfig, trials: list[Trial]):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if sweep.scheduler.kind == "fifo":
        return FIFOScheduler()
    s = sweep.scheduler
    return ASHAScheduler(time_attr="step", max_t=max(t.run["train"]["max_steps"] for t in trials),
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def write_plan(sweep_dir: Path, digest: str, sweep: SweepConfig, base: dict, trials: list[Trial],
               backbones: dict[str, Path], data: dict, mode: Mode) -> None:
    plan = {"config_hash": digest, "sweep": sweep.model_dump(), "base": base,
            "run_mode": "resume" if mode == "resume" else "auto", "order": [t.name for t in trials],
            "data": data,
            "trials": {t.name: {"params": t.params, "run": t.run, "data_key": t.data_key,
                                "backbone_file": str(backbones[t.name])} for t in trials}}
    write_json(sweep_dir / SWEEP_FILE, {**portable(plan, sweep_dir), FOLDER_KEY: str(sweep_dir)}, default=str)


def make_tuner(sweep: SweepConfig, sweep_dir: Path, trials: list[Trial], concurrency: int,
               storage: dict | None = None):
    from ray import tune

    trainable = tune.with_resources(run_trial, {"cpu": TRIAL_DRIVER_CPU})
    path = sweep_dir / TUNE_DIR
    if tune.Tuner.can_restore(str(path)):
        log.info("resuming sweep %s: restoring the Tune experiment in %s", sweep.name, path)
        return tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    metric = trials[0].run["eval"]["select_best_by"]
    asha = sweep.scheduler.kind == "asha"
    return tune.Tuner(
        trainable,
        param_space={"sweep_dir": str(sweep_dir), "trial": tune.grid_search([t.name for t in trials]),
                     "storage": storage},  # trials on other nodes check they see the sweep folder
        tune_config=tune.TuneConfig(scheduler=build_scheduler(sweep, trials), max_concurrent_trials=concurrency,
                                    metric=metric if asha else None, mode="max" if asha else None,
                                    reuse_actors=False),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(sweep_dir), verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=sweep.max_trial_failures)))


def run_sweep(config: str | Path, overrides: list[str] | None = None, mode: Mode = "auto") -> dict:
    """Run (or continue) the sweep in `config`; returns {"sweep_dir", "trials": {name: metrics}, "errors"}."""
    import ray

    from revela.train import ensure_ray, write_marker
    from revela.tuning.prepare import score_backbones

    sweep, base_dir = load_sweep(config, overrides)
    base = base_run_dict(sweep, base_dir)
    digest = sweep_hash(sweep, base)
    # validate everything first (config, grid, models, corpus, dev sets, the cluster's resources), delete last
    check_sweep_dir(sweep, digest, mode)
    trials = check_plan(sweep, base, sweep_folder(sweep))
    ensure_ray(sweep.ray_address or base["ray"]["address"])
    concurrency = max_concurrent(trials, ray.cluster_resources(), sweep.max_concurrent_trials)
    sweep_dir = claim_sweep_dir(sweep, digest, mode)
    trials, data = plan_trials(sweep, base, sweep_dir)
    storage = write_marker(sweep_dir)
    backbones = score_backbones(trials, sweep_dir, storage)
    write_plan(sweep_dir, digest, sweep, base, trials, backbones, data, mode)
    log.info("sweep %s: %d trials, %d at a time, budget %s=%d, in %s", sweep.name, len(trials), concurrency,
             sweep.budget.kind, sweep.budget.value, sweep_dir)
    grid = make_tuner(sweep, sweep_dir, trials, concurrency, storage).fit()
    errors, reported = {}, {}
    for result in grid:
        name = (result.config or {}).get("trial", result.path)
        if result.error is not None:
            errors[name] = str(result.error).splitlines()[0][:300]
        elif result.metrics and "trial_hash" in result.metrics:  # the trial's last report: its record's numbers
            reported[name] = result.metrics
    done = {}
    for trial in trials:
        # a trial's identity does not depend on where the folder is
        digest = trial_hash(RunConfig.model_validate(portable(trial.run, sweep_dir)))
        metrics = reported.get(trial.name)
        if metrics is not None and metrics["trial_hash"] == digest:
            done[trial.name] = {key: metrics[key] for key in tune_metrics_keys(trial.run)}
    return {"sweep_dir": str(sweep_dir), "trials": done, "errors": errors,
            "missing": [t.name for t in trials if t.name not in done]}
