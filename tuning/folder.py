"""Paths inside a sweep folder are stored relative to it, so a copied or moved folder reads its own files.

`sweep.json` and every trial's `revela_trial.json` write a path under the sweep folder as `${sweep}/...`
(`portable`); whoever reads them puts the folder they were read from back in (`localize`). A trial's identity
(`trial_hash`) is computed on the portable form, so it does not change when the folder moves. Files written before
this rule hold absolute paths; `load_plan` refuses one that points into another folder instead of silently
reporting that folder's data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from revela.train import read_json

SWEEP_TOKEN = "${sweep}"
SWEEP_FILE = "sweep.json"
TRIAL_FILE = "revela_trial.json"
FOLDER_KEY = "folder"
"""sweep.json's record of the absolute folder it was written in (a later run tells a moved folder by it)."""


class SweepFolderError(ValueError):
    """A sweep folder whose files cannot be read as its own; the message says why and what to do."""


def portable(value: Any, sweep_dir: str | Path) -> Any:
    """`value` (nested dicts and lists) with every string path under `sweep_dir` written as `${sweep}/...`."""
    root = str(sweep_dir)
    if isinstance(value, str):
        if value == root or value.startswith(root + os.sep):
            return SWEEP_TOKEN + value[len(root):]
        return value
    if isinstance(value, dict):
        return {k: portable(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, root) for v in value]
    return value


def localize(value: Any, sweep_dir: str | Path) -> Any:
    """The inverse of `portable`: `${sweep}/...` strings become paths under `sweep_dir`."""
    root = str(sweep_dir)
    if isinstance(value, str):
        return root + value[len(SWEEP_TOKEN):] if value.startswith(SWEEP_TOKEN) else value
    if isinstance(value, dict):
        return {k: localize(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [localize(v, root) for v in value]
    return value


def same_folder(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def plan_folder(plan: dict) -> str | None:
    """The folder a plan was written in: recorded since paths are portable, else (an older plan) the folder its
    trials' absolute storage path sits in."""
    if plan.get(FOLDER_KEY):
        return plan[FOLDER_KEY]
    for spec in plan.get("trials", {}).values():
        storage = spec.get("run", {}).get("ray", {}).get("storage_path", "")
        if Path(storage).is_absolute():
            return str(Path(storage).parent)
    return None


def load_plan(sweep_dir: str | Path) -> dict:
    """sweep.json as stored (portable paths). Raises FileNotFoundError without one, SweepFolderError when its trials
    live in another folder (absolute paths from before portable storage, in a copied folder)."""
    sweep_dir = Path(sweep_dir)
    plan = json.loads((sweep_dir / SWEEP_FILE).read_text())
    for name, spec in plan.get("trials", {}).items():
        storage = spec.get("run", {}).get("ray", {}).get("storage_path", SWEEP_TOKEN)
        if not storage.startswith(SWEEP_TOKEN) and not same_folder(Path(storage).parent, sweep_dir):
            raise SweepFolderError(
                f"{sweep_dir / SWEEP_FILE}: trial {name} ran in {storage}, outside this folder (a copy of a sweep "
                f"written before paths were stored relative to it); report the original folder, or re-run "
                f"`revela sweep --resume` here to rewrite the plan")
    return plan


def trial_record_path(sweep_dir: str | Path, run: dict) -> Path:
    """Where a trial's record lives, for its run config as stored in the plan."""
    return Path(localize(run["ray"]["storage_path"], sweep_dir)) / run["name"] / TRIAL_FILE


def read_trial_record(sweep_dir: str | Path, run: dict) -> dict | None:
    """A trial's record with its paths in `sweep_dir`; None when the trial has none yet."""
    record = read_json(trial_record_path(sweep_dir, run))
    return None if record is None else localize(record, sweep_dir)
