"""`model.objective.temperature: auto`: tau of Sim, calibrated once before the first optimizer step.

Sim's mean row entropy (diagonal excluded) rises monotonically with tau, from 0 (one-hot) to ln(B-1) (uniform over
the other chunks). So a bisection on log tau, over the retriever's query/passage embeddings of the first training
groups (one forward, no gradient, the model's own `sim_embeddings` and `similarity_weights`), finds the tau that puts
the mean entropy at `target_entropy` x ln(B-1). Rank 0 calibrates on its first `CALIBRATION_GROUPS` groups (at
least its first optimizer step's), which every rank then trains on as usual, and broadcasts tau; a resumed run reads
tau from its checkpoint and never recalibrates.
See docs/temperature.md.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import torch
import torch.distributed as dist

from revela.model import RevelaModel, row_entropy, similarity_weights
from revela.train.runfolder import TEMPERATURE_FILE, write_json
LOG10_TAU_RANGE = (-8.0, 3.0)
"""Where the bisection looks: at 1e-8 any two distinct fp32 cosines make Sim one-hot, at 1e3 Sim is uniform."""
CALIBRATION_GROUPS = 8
"""Groups tau is calibrated on (more when one optimizer step holds more): one group of 8 chunks gives a tau whose
entropy on later groups misses the target by far more than eight do (bench/TAU_NOTES.md)."""
BISECTION_STEPS = 50
"""Halvings of the log10 range: its width ends far below the tolerance of the entropy it aims at."""


@dataclass
class Calibration:
    temperature: float
    entropy_fraction: float | None
    """Mean Sim row entropy at `temperature`, as a fraction of ln(B-1), on the calibration groups (None: not
    calibrated in this process)."""
    target: float
    groups: int
    group_size: int
    source: str = "calibrated"
    """calibrated | checkpoint (a resumed run) | config (a number in the config)."""

    @property
    def reached(self) -> bool:
        return abs(self.entropy_fraction - self.target) <= 0.01

    def line(self) -> str:
        """The console's one line about the run's tau."""
        if self.source == "checkpoint":
            return f"temperature {self.temperature:.4g} (calibrated before the first step; read from the checkpoint)"
        if self.source == "config":
            return f"temperature {self.temperature:.4g} (from the config)"
        line = (f"temperature: auto -> {self.temperature:.4g} (mean Sim entropy {self.entropy_fraction:.0%} of "
                f"ln(B-1), target {self.target:.0%}, on the first {self.groups} groups of B={self.group_size})")
        if not self.reached:
            line += "; the target could not be reached (the retriever's embeddings are (nearly) identical)"
        return line

    def save(self, run_dir: str | Path) -> None:
        """Rank 0 writes the run's tau to temperature.json (how it was chosen, and on what); the console announces
        it in one line."""
        write_json(Path(run_dir, TEMPERATURE_FILE), asdict(self))


def mean_entropy_fraction(query: torch.Tensor, passage: torch.Tensor, temperature: float) -> float:
    """Mean row entropy of Sim over groups of [G, B, E] embeddings, as a fraction of ln(B-1)."""
    weights = similarity_weights(query, passage, temperature)
    return float(row_entropy(weights).mean()) / math.log(query.shape[-2] - 1)


def bisect_temperature(query: torch.Tensor, passage: torch.Tensor, target: float) -> float:
    """The tau whose mean Sim entropy fraction is `target` (the bound nearest to it when out of reach)."""
    low, high = LOG10_TAU_RANGE
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if mean_entropy_fraction(query, passage, 10.0 ** middle) < target:
            low = middle
        else:
            high = middle
    return 10.0 ** ((low + high) / 2)


@torch.no_grad()
def calibrate(model: RevelaModel, batches: Iterable[dict], target: float, device: torch.device | None = None,
              autocast_dtype: torch.dtype | None = None) -> Calibration:
    """tau for `model` on `batches` (G groups each, or one bare group), with the retriever in eval mode (no dropout):
    the embeddings the retriever gives, not one noisy draw of them."""
    from revela.train.loop import move

    device = device or next(model.parameters()).device
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    training = model.retriever.training
    model.retriever.eval()
    try:
        views = []
        for batch in batches:
            with autocast:
                views.append(model.sim_embeddings(move(batch, device)))
    finally:
        model.retriever.train(training)
    if not views:
        raise ValueError("temperature: auto needs at least one training group to calibrate on")
    query, passage = torch.cat([q for q, _ in views]), torch.cat([p for _, p in views])
    groups, size = query.shape[:2]
    if size < 3:
        raise ValueError(f"temperature: auto needs groups of at least 3 chunks (got B={size}): with one other chunk "
                         "Sim is always 1, whatever tau")
    tau = bisect_temperature(query, passage, target)
    return Calibration(tau, mean_entropy_fraction(query, passage, tau), target, groups, size)


def calibration_batches(groups_per_forward: int, grad_accum: int) -> int:
    """Batches (of G groups) to calibrate on: CALIBRATION_GROUPS groups, and at least one optimizer step's."""
    return max(grad_accum, math.ceil(CALIBRATION_GROUPS / groups_per_forward))


def broadcast_from_rank0(value: float, device: torch.device) -> float:
    """Rank 0's value on every rank (a no-op outside torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def setup_temperature(model: RevelaModel, target: float, rank: int, first_batches: list[dict],
                      device: torch.device | None = None, autocast_dtype: torch.dtype | None = None,
                      checkpoint_temperature: float | None = None) -> Calibration:
    """Give `model` its tau before the first step, the same on every rank; returns how it was chosen.

    A number from the config is kept; else a resumed run's `checkpoint_temperature`; else rank 0 calibrates on
    `first_batches` (its first training batches, which it then trains on) and broadcasts the result.
    Every rank calls this at the same point (the broadcast is a collective), before DDP/FSDP wrap the model.
    """
    def given(source: str) -> Calibration:
        return Calibration(model.temperature, None, target, 0, 0, source)

    if model.temperature is not None:
        return given("config")
    if checkpoint_temperature is not None:
        model.temperature = float(checkpoint_temperature)
        return given("checkpoint")
    device = device or next(model.parameters()).device
    calibration = calibrate(model, first_batches, target, device, autocast_dtype) if rank == 0 else None
    model.temperature = broadcast_from_rank0(calibration.temperature if calibration else 0.0, device)
    return calibration or given("calibrated")
