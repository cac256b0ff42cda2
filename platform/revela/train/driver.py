"""The main job: prepare data, train on Ray Train (DDP or FSDP), report. One call, `run(config)`.

Run names are stable: re-running a name resumes it; a finished run or a changed config under the same name is
refused unless `mode` asks to resume or overwrite explicitly.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Literal

import ray
import ray.train

from revela.config import RunConfig
from revela.configbase import check_safe_name
from revela.train.failures import explain_failure
from revela.train.preflight import check_run_inputs
from revela.train.resume import repair_snapshot
from revela.train.ray_setup import TorchTrainer, ensure_ray, train_logging
from revela.train.runfolder import (DEV_SCORES_FILE, RUN_FILE, clear_status, config_hash, metrics_history,
                                    read_run_record, read_status, write_run_record)
from revela.train.storage import write_marker
from revela.train.worker import train_worker

Mode = Literal["auto", "resume", "overwrite"]


class RunConflictError(RuntimeError):
    """The run name is taken by a finished run or by a different config."""


class TrainingStoppedError(RuntimeError):
    """Training stopped before max_steps (e.g. non-finite loss); the last good checkpoint is kept."""




def claim_run_dir(cfg: RunConfig, mode: Mode) -> Path:
    run_dir = Path(cfg.ray.storage_path).absolute() / check_safe_name(cfg.name)  # model_copy skips validation
    if run_dir.is_symlink():
        raise RunConflictError(f"run folder {run_dir} is a symbolic link; refusing to train into or remove it")
    record = run_dir / RUN_FILE
    if record.is_file() and mode != "overwrite":
        previous = read_run_record(run_dir)
        status = read_status(run_dir)
        if previous["config_hash"] != config_hash(cfg) and mode != "resume":
            raise RunConflictError(
                f"run {cfg.name!r} in {run_dir} was started with a different config; "
                "pass --resume to continue it with this config, --overwrite to start over, or choose another name")
        if status.get("status") == "finished" and mode != "resume":
            raise RunConflictError(
                f"run {cfg.name!r} already finished at step {status.get('step')} ({run_dir}); "
                "pass --resume with a larger train.max_steps to continue, --overwrite to retrain, or use another name")
    check_run_inputs(cfg)  # validate everything first, delete last
    if record.is_file() and mode == "overwrite":
        shutil.rmtree(run_dir)
    repair_snapshot(run_dir, cfg.name)  # a lost newest checkpoint: resume from the newest complete one
    run_dir.mkdir(parents=True, exist_ok=True)
    clear_status(run_dir)
    write_run_record(run_dir, config_hash(cfg), cfg.model_dump())
    return run_dir


def checkpoint_and_validation(cfg: RunConfig, run_dir: Path | None = None, storage: dict | None = None):
    """Keep the best K checkpoints by the dev metric when there are dev sets (scored asynchronously by evaluation
    tasks as checkpoints arrive), else the latest K."""
    if not cfg.eval.datasets:
        return ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints), None
    from revela.evaluation.actors import dev_set_hashes, validation_config

    ev = cfg.eval
    validation = validation_config(ev.datasets, num_cpus=ev.num_cpus, num_gpus=ev.num_gpus,
                                   max_queries=ev.max_queries, batch_size=ev.batch_size, max_length=ev.max_length,
                                   passage_max_length=ev.passage_max_length, record=True,
                                   history_file=str(run_dir / DEV_SCORES_FILE) if run_dir else None,
                                   storage=storage, dev_hashes=dev_set_hashes(ev.datasets) if storage else None)
    keep = ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                      checkpoint_score_attribute=ev.select_best_by, checkpoint_score_order="max")
    return keep, validation


def fit(cfg: RunConfig, run_dir: Path, dataset, verbose: bool = False, callbacks: tuple = ()) -> ray.train.Result:
    storage = write_marker(run_dir)  # workers and evaluation tasks on other nodes check they see it
    checkpoint_config, validation = checkpoint_and_validation(cfg, run_dir, storage)
    scaling = ray.train.ScalingConfig(
        num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
        resources_per_worker={"CPU": cfg.ray.cpus_per_worker, **({"GPU": cfg.ray.gpus_per_worker} if cfg.ray.use_gpu else {}),
                              **cfg.ray.resources_per_worker},
        placement_strategy=cfg.ray.placement_strategy, label_selector=cfg.ray.label_selector or None)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"run": cfg.model_dump(), "run_dir": str(run_dir), "storage": storage},
        scaling_config=scaling,
        datasets={"train": dataset},
        validation_config=validation,
        run_config=ray.train.RunConfig(
            name=cfg.name, storage_path=str(run_dir.parent),
            failure_config=ray.train.FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=checkpoint_config, logging_config=train_logging(verbose),
            callbacks=list(callbacks)),
    )
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as err:  # storage not shared, a lost node: one line, not every traceback
        message = explain_failure(cfg.name, run_dir, err, cfg.ray.max_failures)
        if message is None:
            raise
        raise TrainingStoppedError(message) from err


def run(cfg: RunConfig, mode: Mode = "auto", verbose: bool = False, callbacks: tuple = ()) -> dict:
    """Train `cfg` end to end; returns (and writes to <run>/report.json) the run's report.

    verbose: Ray Train's per-report result dumps and state transitions on the console too.
    callbacks: Ray Train user callbacks (e.g. forwarding metrics to a Ray Tune trial)."""
    from revela.train.console import RunConsole
    from revela.train.data import heldout_and_training_data
    from revela.train.report import write_report
    from revela.train.runfolder import read_temperature

    run_dir = claim_run_dir(cfg, mode)  # refusals come before Ray starts
    ensure_ray(cfg.ray.address)
    started = time.time()
    data = heldout_and_training_data(cfg, run_dir)
    with RunConsole(run_dir, cfg.train.max_steps, cfg.train.log_every,
                    eval_metric=cfg.eval.select_best_by if cfg.eval.datasets else None,
                    sim=cfg.model.objective.sim):
        result = fit(cfg, run_dir, data.train, verbose, callbacks)
    status = read_status(run_dir)
    if status.get("status") == "non_finite_loss":
        raise TrainingStoppedError(
            f"run {cfg.name!r} stopped: {status['message']}; last good checkpoint: "
            f"{result.checkpoint.path if result.checkpoint else 'none'}")
    checkpoint = final_checkpoint(cfg, run_dir, result)
    # the untrained backbone is scored with the run's tau, known once the workers calibrated it (temperature: auto)
    temperature = (read_temperature(run_dir) or {}).get("temperature")
    before = data.score_heldout(cfg, checkpoint=None, temperature=temperature)
    after = data.score_heldout(cfg, checkpoint=checkpoint, temperature=temperature)
    return write_report(run_dir, cfg, checkpoint=checkpoint, history=metrics_history(run_dir),
                        heldout_before=before, heldout_after=after, data_summary=data.summary,
                        wall_s=time.time() - started, checkpoints=scored_checkpoints(cfg, result),
                        temperature=temperature)


def final_checkpoint(cfg: RunConfig, run_dir: Path, result: ray.train.Result) -> str:
    """The run's last checkpoint; a run that ended without one (nothing to score, export or resume) is an error."""
    if result.checkpoint is None or not Path(result.checkpoint.path).is_dir():
        raise TrainingStoppedError(
            f"run {cfg.name!r} ended at step {read_status(run_dir).get('step', '?')} without a checkpoint in "
            f"{run_dir}: nothing to score, export or resume from")
    return result.checkpoint.path


def scored_checkpoints(cfg: RunConfig, result: ray.train.Result) -> list[dict]:
    """The kept checkpoints with their step and dev scores, best first when there are dev sets."""
    rows = []
    for ckpt, metrics in result.best_checkpoints or []:
        dev = {k: v for k, v in metrics.items() if k.startswith("dev_") or "/" in k}
        rows.append({"path": ckpt.path, "step": metrics.get("step"), **dev})
    key = cfg.eval.select_best_by
    if cfg.eval.datasets:
        rows.sort(key=lambda r: r.get(key) if r.get(key) == r.get(key) else float("-inf"), reverse=True)
    return rows
