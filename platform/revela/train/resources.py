"""What one training run holds on the Ray cluster at the same time, counted from its config.

    train_workers   ray.num_workers x (ray.cpus_per_worker CPUs, ray.gpus_per_worker GPUs when ray.use_gpu)
    stream_actors   data.stream_actors x STREAM_ACTOR_CPUS: the Ray Data actors that read and tokenize groups
    evaluation      EVAL_TASKS_IN_FLIGHT x (eval.num_cpus, eval.num_gpus), when there are dev sets

Ray Train's controller actor asks for no CPU (ray.train.v2.api.data_parallel_trainer starts it with num_cpus=0),
and the driver's own process is not a Ray task; a caller that runs the driver inside one (a Tune trial) adds it.
"""

from __future__ import annotations

from revela.config import RunConfig
from revela.data.stream import STREAM_ACTOR_CPUS

EVAL_TASKS_IN_FLIGHT = 1
"""Checkpoints a run scores at once: Ray Train V2 runs one validation task at a time per run (ray.train.v2._internal.
execution.checkpoint.validation_manager.MAX_IN_FLIGHT_VALIDATIONS) and queues the rest."""


def run_resources(cfg: RunConfig) -> dict[str, dict[str, float]]:
    """{part: {"CPU": n, "GPU": n}} for every part of a run that holds resources at once (module docstring)."""
    workers = cfg.ray.num_workers
    scoring = EVAL_TASKS_IN_FLIGHT if cfg.eval.datasets else 0
    return {
        "train_workers": {"CPU": workers * cfg.ray.cpus_per_worker,
                          "GPU": workers * cfg.ray.gpus_per_worker if cfg.ray.use_gpu else 0.0},
        "stream_actors": {"CPU": cfg.data.stream_actors * STREAM_ACTOR_CPUS, "GPU": 0.0},
        "evaluation": {"CPU": scoring * cfg.eval.num_cpus, "GPU": scoring * cfg.eval.num_gpus},
    }


def total_resources(parts: dict[str, dict[str, float]]) -> dict[str, float]:
    """The sum over `parts` ({part: {resource: amount}}), per resource."""
    total: dict[str, float] = {}
    for amounts in parts.values():
        for key, value in amounts.items():
            total[key] = total.get(key, 0.0) + value
    return total
