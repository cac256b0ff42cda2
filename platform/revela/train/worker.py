"""The Ray Train worker loop: stream of groups -> Trainer steps -> metrics and checkpoints through ray.train.report.

It runs in ray.num_workers >= 1 Train worker processes: Ray Train's local mode (num_workers=0, the function in the
driver) keeps no checkpoint in storage and scores none, so the run config refuses it (revela.config.RayConfig).
Set-up is `revela.train.worker_setup`, the stream of steps `revela.train.step_stream`, throughput
`revela.train.step_clock`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray.train
import torch

from revela.config import TrainConfig
from revela.train.checkpoint import gather_training_state, save_checkpoint
from revela.train.loop import NonFiniteLossError
from revela.train.runfolder import METRICS_FILE, append_jsonl, write_status
from revela.train.step_clock import StepClock
from revela.train.worker_setup import Worker, start_worker


def train_worker(config: dict) -> None:
    w = start_worker(config)
    max_steps = w.cfg.train.max_steps
    steps = w.stream.steps(w.data_state["epoch"], w.data_state["groups_in_epoch"])
    clock = StepClock(w.world)
    logged = False
    while w.trainer.step < max_steps:
        step = next(steps)
        measure, saving = step_plan(w.trainer.step + 1, w.cfg.train)
        try:
            metrics = w.trainer.train_step(step.batches, measure=measure)
            if saving:
                w.trainer.check_finite()  # never save a step that was not finite
        except NonFiniteLossError as err:  # raised on every rank at once: the Trainer agrees across ranks
            record_end(w, "non_finite_loss", message=str(err))
            return  # the last reported checkpoint stays the newest one
        w.data_state = {"epoch": step.epoch, "groups_in_epoch": step.consumed, "world_size": w.world}
        clock.count(metrics["groups"])
        if measure:
            log_step(w, metrics, step.epoch, clock)
            logged = True
        if saving:
            checkpoint_and_report(w, metrics)
        elif measure:
            ray.train.report(metrics)
    if logged:
        record_end(w, "finished")


def step_plan(number: int, cfg: TrainConfig) -> tuple[bool, bool]:
    """(measure, save) for optimizer step `number`: every log_every-th step is measured, every
    checkpoint_every-th and the last is saved, and a saved step is always measured."""
    every = cfg.checkpoint_every
    saving = bool(every and number % every == 0) or number == cfg.max_steps
    return number % cfg.log_every == 0 or saving, saving


def log_step(w: Worker, metrics: dict, epoch: int, clock: StepClock) -> None:
    """Complete a measured step's metrics with its epoch, throughput and memory; rank 0 appends them to the run's
    metrics file and the dashboard."""
    timing = clock.lap(metrics["tokens"], w.stream.wait_s)
    metrics.update(epoch=epoch, **timing, groups_per_forward=w.cfg.train.groups_per_forward,
                   temperature=w.model.temperature)
    if w.device.type == "cuda":
        metrics["gpu_max_memory_gib"] = torch.cuda.max_memory_allocated(w.device) / 2**30
    if w.rank == 0:
        append_jsonl(w.run_dir / METRICS_FILE, metrics)
        w.telemetry.record(metrics)


def checkpoint_and_report(w: Worker, metrics: dict) -> None:
    """Rank 0 saves a checkpoint (under FSDP every rank takes part in gathering it) and every rank reports it;
    with dev sets the checkpoint is handed to the evaluation task."""
    validate = bool(w.cfg.eval.datasets)
    if validate:  # NaN until the evaluation task scores this checkpoint (Ray then merges the real value)
        metrics = {**metrics, w.cfg.eval.select_best_by: float("nan")}
    state = gather_training_state(w.engine, w.trainer) if w.sharded or w.rank == 0 else None  # collective in FSDP
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if w.rank == 0:
            save_checkpoint(Path(tmp) / "ckpt", w.model, w.trainer, w.cfg, w.data_state, metrics, state)
            ckpt = ray.train.Checkpoint.from_directory(str(Path(tmp) / "ckpt"))
        ray.train.report(metrics, checkpoint=ckpt, validation=validate and w.rank == 0)


def record_end(w: Worker, status: str, **facts) -> None:
    """Rank 0 writes how the training function ended: finished, or non_finite_loss with its message."""
    if w.rank == 0:
        write_status(w.run_dir, status, w.trainer.step, **facts)
