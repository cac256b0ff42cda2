"""Everything a Train worker holds before its first step: config, rank, model (with its tau), the DDP/FSDP engine,
the Trainer, the stream of steps and, for a resumed run, the checkpoint's state and data position."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray.train
import torch

from revela.config import RunConfig
from revela.model import RevelaModel
from revela.train.checkpoint import checkpoint_temperature, load_checkpoint
from revela.train.loop import Trainer, resolve_precision
from revela.train.ray_setup import follow_train_log_level
from revela.train.step_stream import StepStream
from revela.train.storage import confirm_worker
from revela.train.telemetry import DashboardMetrics
from revela.train.temperature import Calibration, calibration_batches, setup_temperature


@dataclass
class Worker:
    cfg: RunConfig
    run_dir: Path
    rank: int
    world: int
    device: torch.device
    model: RevelaModel
    engine: torch.nn.Module
    """The model as trained: wrapped by DDP or FSDP when there are several workers, else the model itself."""
    trainer: Trainer
    stream: StepStream
    data_state: dict
    """The position a checkpoint records: epoch, groups of it this rank consumed, world size."""
    telemetry: DashboardMetrics | None
    """Rank 0's dashboard metrics; None on the other ranks."""

    @property
    def sharded(self) -> bool:
        return self.cfg.ray.strategy == "fsdp" and self.world > 1


def start_worker(config: dict) -> Worker:
    """Set up this rank from the driver's `config` ({"run", "run_dir", "storage"}). Every rank runs the same
    collectives in the same order: tau's broadcast, then the engine's wrapping."""
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
    stream = StepStream(ray.train.get_dataset_shard("train"), cfg.train.groups_per_forward, cfg.train.grad_accum)
    calibration = give_temperature(model, cfg, rank, device, stream, resume)
    if rank == 0:
        calibration.save(run_dir)
    engine = wrap_model(model, cfg, world, device)
    trainer = Trainer(model, cfg.train, device, engine=engine)
    data_state = resume_state(resume, model, trainer, cfg.train.seed, rank, world)
    telemetry = DashboardMetrics(cfg.name, start_step=trainer.step) if rank == 0 else None
    return Worker(cfg, run_dir, rank, world, device, model, engine, trainer, stream, data_state, telemetry)


def seed_rank(seed: int, rank: int, step: int) -> None:
    value = seed + rank + 1_000_003 * step
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def give_temperature(model: RevelaModel, cfg: RunConfig, rank: int, device: torch.device, stream: StepStream,
                     resume: ray.train.Checkpoint | None) -> Calibration:
    """tau before DDP/FSDP wrap the model (rank 0 runs the plain retriever): a resumed run's from its checkpoint,
    else calibrated on the first batches of the stream, which every rank then trains on as usual (so all ranks
    still consume the same number of batches)."""
    resumed_tau, first_batches = None, []
    if resume is not None:
        with resume.as_directory() as d:
            resumed_tau = checkpoint_temperature(d)
    if model.temperature is None and resumed_tau is None:
        first_batches = stream.take_first(calibration_batches(cfg.train.groups_per_forward, cfg.train.grad_accum))
    return setup_temperature(model, cfg.model.objective.target_entropy, rank, first_batches, device,
                             resolve_precision(cfg.train.precision, device), resumed_tau)


def wrap_model(model: RevelaModel, cfg: RunConfig, world: int, device: torch.device) -> torch.nn.Module:
    """The engine the Trainer steps: FSDP or DDP across several workers, the model itself for one."""
    if world > 1 and cfg.ray.strategy == "fsdp":
        # torch's FSDP directly: Ray's prepare_model only allows it on GPUs, FSDP itself also runs on CPU/gloo
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(model, **fsdp_kwargs(model, device))
    if world > 1:
        return ray.train.torch.prepare_model(model, move_to_device=False)
    return model


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


def resume_state(resume: ray.train.Checkpoint | None, model: RevelaModel, trainer: Trainer, seed: int, rank: int,
                 world: int) -> dict:
    """The data position this rank starts from; a resumed run's checkpoint is loaded into `model` and `trainer`
    first (weights, optimizer, schedule, step)."""
    data_state = {"epoch": 0, "groups_in_epoch": 0, "world_size": world}
    if resume is None:
        return data_state
    with resume.as_directory() as d:
        data_state = {**data_state, **(load_checkpoint(d, model, trainer) or {})}
    # each rank its own random stream again (the checkpoint holds rank 0's), distinct from before the restart
    seed_rank(seed, rank, trainer.step)
    return rescale_position(data_state, world)


def rescale_position(data_state: dict, world: int) -> dict:
    """Groups consumed per rank at the old world size -> per rank at the new one (same total)."""
    old = data_state.get("world_size", world)
    if old == world:
        return data_state
    total = data_state["groups_in_epoch"] * old
    return {**data_state, "groups_in_epoch": total // world, "world_size": world}
