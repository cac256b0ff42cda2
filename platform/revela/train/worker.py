"""The Ray Train worker loop: stream of groups -> Trainer steps -> metrics and checkpoints through ray.train.report.

It runs in ray.num_workers >= 1 Train worker processes: Ray Train's local mode (num_workers=0, the function in the
driver) keeps no checkpoint in storage and scores none, so the run config refuses it (revela.config.RayConfig).
"""

from __future__ import annotations

import itertools
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import ray.train
import torch

from revela.config import RunConfig
from revela.model import RevelaModel
from revela.train.checkpoint import checkpoint_temperature, gather_training_state, load_checkpoint, save_checkpoint
from revela.train.loop import NonFiniteLossError, Trainer, resolve_precision
from revela.train.ray_setup import follow_train_log_level
from revela.train.runfolder import METRICS_FILE, append_jsonl, write_status
from revela.train.storage import confirm_worker
from revela.train.telemetry import DashboardMetrics
from revela.train.temperature import calibration_batches, setup_temperature


def seed_rank(seed: int, rank: int, step: int) -> None:
    value = seed + rank + 1_000_003 * step
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def rescale_position(data_state: dict, world: int) -> dict:
    """Groups consumed per rank at the old world size -> per rank at the new one (same total)."""
    old = data_state.get("world_size", world)
    if old == world:
        return data_state
    total = data_state["groups_in_epoch"] * old
    return {**data_state, "groups_in_epoch": total // world, "world_size": world}


def fsdp_kwargs(model: RevelaModel, device: torch.device) -> dict:
    """One FSDP unit per transformer block (the classes the models declare unsplittable), original parameters
    kept so LoRA's mixed requires_grad works and checkpoints see the unwrapped names."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    names = set()
    for part in (model.retriever.backbone, model.lm):
        base = part.get_base_model() if hasattr(part, "get_base_model") else part
        names |= set(getattr(base, "_no_split_modules", None) or [])
    blocks = {type(m) for m in model.modules() if type(m).__name__ in names}
    return {"use_orig_params": True, "device_id": device, "auto_wrap_policy": ModuleWrapPolicy(blocks)}


def train_worker(config: dict) -> None:
    cfg = RunConfig.model_validate(config["run"])
    run_dir = Path(config["run_dir"])
    follow_train_log_level()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    confirm_worker(config.get("storage"), rank)  # refuse on a node that does not share the run folder
    seed_rank(cfg.train.seed, rank, 0)
    device = ray.train.torch.get_device() if world > 0 else torch.device("cpu")

    model = RevelaModel.from_config(cfg.model).to(device)
    resume = ray.train.get_checkpoint()
    shard = ray.train.get_dataset_shard("train")
    per_forward = cfg.train.groups_per_forward

    def epoch_batches():
        return iter(shard.iter_torch_batches(batch_size=per_forward, prefetch_batches=2))

    # tau before DDP/FSDP wrap the model (rank 0 runs the plain retriever): a resumed run's from its checkpoint,
    # else calibrated on the first batches of the stream, which every rank then trains on as usual (so all ranks
    # still consume the same number of batches)
    first_epoch, first_batches, resumed_tau = epoch_batches(), [], None
    if resume is not None:
        with resume.as_directory() as d:
            resumed_tau = checkpoint_temperature(d)
    if model.temperature is None and resumed_tau is None:
        first_batches = list(itertools.islice(first_epoch, calibration_batches(per_forward, cfg.train.grad_accum)))
    calibration = setup_temperature(model, cfg.model.objective.target_entropy, rank, first_batches, device,
                                    resolve_precision(cfg.train.precision, device), resumed_tau)
    if rank == 0:
        calibration.save(run_dir)
    engine = model
    if world > 1 and cfg.ray.strategy == "fsdp":
        # torch's FSDP directly: Ray's prepare_model only allows it on GPUs, FSDP itself also runs on CPU/gloo
        from torch.distributed.fsdp import FullyShardedDataParallel

        engine = FullyShardedDataParallel(model, **fsdp_kwargs(model, device))
    elif world > 1:
        engine = ray.train.torch.prepare_model(model, move_to_device=False)
    trainer = Trainer(model, cfg.train, device, engine=engine)

    data_state = {"epoch": 0, "groups_in_epoch": 0, "world_size": world}
    if resume is not None:
        with resume.as_directory() as d:
            data_state = {**data_state, **(load_checkpoint(d, model, trainer) or {})}
        # each rank its own random stream again (the checkpoint holds rank 0's), distinct from before the restart
        seed_rank(cfg.train.seed, rank, trainer.step)
        data_state = rescale_position(data_state, world)
    telemetry = DashboardMetrics(cfg.name, start_step=trainer.step) if rank == 0 else None

    validate = bool(cfg.eval.datasets)

    def checkpoint_and_report(metrics: dict) -> None:
        if validate:  # NaN until the evaluation task scores this checkpoint (Ray then merges the real value)
            metrics = {**metrics, cfg.eval.select_best_by: float("nan")}
        sharded = cfg.ray.strategy == "fsdp" and world > 1
        state = gather_training_state(engine, trainer) if sharded or rank == 0 else None  # collective under FSDP
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_checkpoint(Path(tmp) / "ckpt", model, trainer, cfg, data_state, metrics, state)
                ckpt = ray.train.Checkpoint.from_directory(str(Path(tmp) / "ckpt"))
            ray.train.report(metrics, checkpoint=ckpt, validation=validate and rank == 0)

    last_metrics: dict = {}
    wait, started, epoch = 0.0, time.perf_counter(), data_state["epoch"]
    interval = {"start": started, "groups": 0, "steps": 0}  # since the last logged step
    skip = data_state["groups_in_epoch"]
    while trainer.step < cfg.train.max_steps:
        pending, consumed = [], 0
        batches = itertools.chain(first_batches, first_epoch) if first_epoch is not None else epoch_batches()
        first_epoch, first_batches = None, []
        t0 = time.perf_counter()
        for batch in batches:
            wait += time.perf_counter() - t0
            size = batch["lm_input_ids"].shape[0]
            consumed += size
            if consumed <= skip:  # resuming mid-epoch: these groups were trained on before the restart
                t0 = time.perf_counter()
                continue
            if consumed - size < skip:  # the resume point falls inside this batch
                batch = {k: v[skip - (consumed - size):] for k, v in batch.items()}
            pending.append(batch)
            if len(pending) < cfg.train.grad_accum:
                t0 = time.perf_counter()
                continue
            step_number = trainer.step + 1
            every = cfg.train.checkpoint_every
            saving = (every and step_number % every == 0) or step_number == cfg.train.max_steps
            measure = step_number % cfg.train.log_every == 0 or saving
            try:
                metrics = trainer.train_step(pending, measure=measure)
                if saving:
                    trainer.check_finite()  # never save a step that was not finite
            except NonFiniteLossError as err:  # raised on every rank at once: the Trainer agrees across ranks
                if rank == 0:
                    write_status(run_dir, "non_finite_loss", trainer.step, message=str(err))
                return  # the last reported checkpoint stays the newest one
            pending = []
            data_state = {"epoch": epoch, "groups_in_epoch": consumed, "world_size": world}
            interval["groups"] += metrics["groups"]
            interval["steps"] += 1
            if measure:  # train_step read the device, so the time since the last logged step is real work
                now = time.perf_counter()
                elapsed = now - interval["start"]
                metrics.update(epoch=epoch, step_time_s=elapsed / interval["steps"], wall_time=time.time(),
                               interval_steps=interval["steps"],
                               tokens_per_s=metrics["tokens"] * world / elapsed,
                               groups_per_s=interval["groups"] * world / elapsed,
                               groups_per_forward=per_forward, temperature=model.temperature,
                               data_wait_fraction=wait / (now - started))
                interval = {"start": now, "groups": 0, "steps": 0}
                if device.type == "cuda":
                    metrics["gpu_max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                last_metrics = metrics
                if rank == 0:
                    append_jsonl(run_dir / METRICS_FILE, metrics)
                    telemetry.record(metrics)
            if saving:
                checkpoint_and_report(metrics)
            elif measure:
                ray.train.report(metrics)
            if trainer.step >= cfg.train.max_steps:
                break
            t0 = time.perf_counter()
        if consumed == 0:
            raise RuntimeError("the training stream yielded no groups for this worker")
        epoch, skip = epoch + 1, 0
    if last_metrics and rank == 0:
        write_status(run_dir, "finished", trainer.step)
