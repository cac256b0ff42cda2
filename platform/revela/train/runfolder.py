"""A training run's folder, `<ray.storage_path>/<name>/`: the name of every file in it, the one way its JSON files
are written, and the readers.

    revela_run.json       RUN_FILE          the config (and its hash) of the run that claimed the folder; driver
    revela_status.json    STATUS_FILE       {"status": "finished" | "non_finite_loss", "step", ...}; rank 0
    metrics.jsonl         METRICS_FILE      one row per logged step, appended by rank 0 (a restart re-logs steps)
    dev_scores.jsonl      DEV_SCORES_FILE   one row per scored checkpoint, appended by the evaluation tasks; kept
                                            when checkpoints are pruned
    temperature.json      TEMPERATURE_FILE  the run's tau of Sim (calibrated or fixed); rank 0
    report.json           REPORT_FILE       the run's report (`revela.train.report`); driver
    loss_curve.png        PLOT_FILE         its loss curves
    checkpoint_*/         Ray Train's checkpoints; each holds revela_checkpoint.json (written last) and, once
                          scored, EVAL_FILE (revela_eval.json)
    checkpoint_manager_snapshot.json  SNAPSHOT  Ray Train's record of them (repaired by `revela.train.resume`)
    .revela-storage/      the storage markers (`revela.train.storage`)

Other processes read these files while they are written (the console follows the run, a sweep's report reads
finished trials), so every JSON file is replaced whole (`write_json`) and JSONL files only grow by whole lines
(`append_jsonl`). Only the standard library here: importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

RUN_FILE = "revela_run.json"
STATUS_FILE = "revela_status.json"
METRICS_FILE = "metrics.jsonl"
DEV_SCORES_FILE = "dev_scores.jsonl"
TEMPERATURE_FILE = "temperature.json"
REPORT_FILE = "report.json"
PLOT_FILE = "loss_curve.png"
EVAL_FILE = "revela_eval.json"
SNAPSHOT = "checkpoint_manager_snapshot.json"
"""Ray Train V2's name for it (ray.train.v2._internal.constants.CHECKPOINT_MANAGER_SNAPSHOT_FILENAME)."""


class RunFolderError(ValueError):
    """A file in a run folder that cannot be read; the message names the file (and line)."""


def write_json(path: str | Path, data: Any, *, indent: int | None = 2, default=None, allow_nan: bool = True) -> None:
    """Write `data` as JSON so that a reader sees the old file or the new one, never half of one: serialize first,
    write a temporary file next to `path`, then rename it over `path`. On any error nothing is left behind."""
    path = Path(path)
    text = json.dumps(data, indent=indent, default=default, allow_nan=allow_nan) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: ranks may write side by side
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one row as one line (a fresh line even when the file ends in a line cut short by a lost process)."""
    path = Path(path)
    line = json.dumps(row) + "\n"
    with open(path, "ab+") as f:
        end = f.seek(0, os.SEEK_END)
        if end:
            f.seek(end - 1)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode())


def read_json(path: str | Path) -> dict | None:
    """A JSON file's contents; None when it is not there. A file that is not JSON is a RunFolderError."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise RunFolderError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: str | Path) -> list[dict]:
    """Every row of a JSONL file ([] when it is not there); a line that is not a JSON object is a RunFolderError
    naming file:line."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise RunFolderError(f"{path}:{number}: not a JSON line ({e})") from None
        if not isinstance(row, dict):
            raise RunFolderError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def read_status(run_dir: str | Path) -> dict:
    """The workers' last word on the run ({} while none): {"status": "finished" | "non_finite_loss", "step", ...}."""
    return read_json(Path(run_dir, STATUS_FILE)) or {}


def write_status(run_dir: str | Path, status: str, step: int, **extra) -> None:
    write_json(Path(run_dir, STATUS_FILE), {"status": status, "step": step, **extra})


def clear_status(run_dir: str | Path) -> None:
    Path(run_dir, STATUS_FILE).unlink(missing_ok=True)


def config_hash(cfg) -> str:
    """What makes two runs the same run (RUN_FILE records it): everything in the RunConfig `cfg` except how many
    steps to take and where Ray runs."""
    data = cfg.model_dump()
    data["train"].pop("max_steps")
    data.pop("ray")
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def read_run_record(run_dir: str | Path) -> dict | None:
    """{"config_hash", "config"} of the run that claimed the folder; None for a folder no run claimed."""
    return read_json(Path(run_dir, RUN_FILE))


def write_run_record(run_dir: str | Path, config_hash: str, config: dict) -> None:
    write_json(Path(run_dir, RUN_FILE), {"config_hash": config_hash, "config": config})


def read_report(run_dir: str | Path) -> dict | None:
    return read_json(Path(run_dir, REPORT_FILE))


def read_temperature(run_dir: str | Path) -> dict | None:
    """The run's tau as rank 0 wrote it (`revela.train.temperature.Calibration` fields); None before it did."""
    return read_json(Path(run_dir, TEMPERATURE_FILE))


def metrics_history(run_dir: str | Path) -> list[dict]:
    """Logged steps, one row per step: after a restart the retrained steps' latest values win."""
    return latest_per_step(read_jsonl(Path(run_dir, METRICS_FILE)))


def latest_per_step(rows: list[dict]) -> list[dict]:
    """metrics.jsonl's rows (every logged step, restarts included) -> one row per step, the latest, by step."""
    return sorted({row["step"]: row for row in rows}.values(), key=lambda row: row["step"])


def dev_history(run_dir: str | Path) -> list[dict]:
    """Scored checkpoints by step, each row with "step" (a step scored twice, after a restart, keeps its latest
    score)."""
    return scored_per_step(read_jsonl(Path(run_dir, DEV_SCORES_FILE)))


def scored_per_step(rows: list[dict]) -> list[dict]:
    """dev_scores.jsonl's rows (every scoring, restarts included) -> one row per checkpoint step, the latest."""
    by_step = {int(r["checkpoint_step"]): {**r, "step": int(r["checkpoint_step"])}
               for r in rows if "checkpoint_step" in r}
    return [by_step[s] for s in sorted(by_step)]
