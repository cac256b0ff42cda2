"""Training: the optimizer step (loop), checkpoints, the worker loop and the Ray Train driver.

What other packages (`revela.tuning`, jobs) use is exported here; the submodules are this package's own business.

Running a training run (`revela.train.driver`)
    run(cfg, mode, verbose, callbacks) -> report   train a RunConfig end to end; returns the run's report
    ensure_ray(address)                            connect to (or start) the Ray cluster a run needs
    Mode                                           "auto" | "resume" | "overwrite"
    RunConflictError, TrainingStoppedError         a taken run name; training that stopped before max_steps

The run folder (`revela.train.runfolder`): its file names and the one way to write and read them
    RUN_FILE, STATUS_FILE, METRICS_FILE, DEV_SCORES_FILE, TEMPERATURE_FILE, REPORT_FILE
    config_hash(cfg)                               what makes two runs the same run (RUN_FILE records it)
    write_json(path, data)                         atomic JSON (temporary file, then rename)
    read_json, read_jsonl                          a JSON / JSONL file; a bad one is a RunFolderError naming file:line
    read_status, read_run_record, read_report, read_temperature
    metrics_history(run_dir), dev_history(run_dir) logged steps / scored checkpoints, one row per step
    latest_per_step(rows), scored_per_step(rows)   the same, over rows already read
    RunFolderError

What a run holds on the cluster (`revela.train.resources`)
    run_resources(cfg) -> {part: {"CPU", "GPU"}}   Train workers, the data stream's actors, the evaluation task
    total_resources(parts)                         their sum per resource

Checks before anything runs
    default_sources()                              the embedded default corpus (`revela.train.data`)
    check_model(name, key)                         a model name resolves, else a ConfigError naming key
    write_marker(folder), check_marker(marker, who)  shared-storage markers (`revela.train.storage`)

Names load on first use: importing `revela.train` itself imports neither torch nor Ray.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    **dict.fromkeys(("run", "Mode", "RunConflictError", "TrainingStoppedError"), "revela.train.driver"),
    "ensure_ray": "revela.train.ray_setup",
    **dict.fromkeys(("RUN_FILE", "STATUS_FILE", "METRICS_FILE", "DEV_SCORES_FILE", "TEMPERATURE_FILE", "REPORT_FILE",
                     "write_json", "read_json", "read_jsonl", "read_status", "read_run_record", "read_report",
                     "read_temperature", "metrics_history", "dev_history", "latest_per_step", "scored_per_step",
                     "config_hash", "RunFolderError"), "revela.train.runfolder"),
    **dict.fromkeys(("run_resources", "total_resources"), "revela.train.resources"),
    "default_sources": "revela.train.data",
    "check_model": "revela.train.preflight",
    **dict.fromkeys(("write_marker", "check_marker"), "revela.train.storage"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'revela.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
