"""Resume a run whose newest checkpoint is lost: repair Ray Train's run snapshot, or stop with one line.

Ray Train V2 resumes a run from `checkpoint_manager_snapshot.json` in the run folder. If a checkpoint listed there
is gone (deleted, lost with a disk), Ray refuses to start (`CheckpointManagerInitializationError`, a long
traceback) and advises deleting the run folder, which would also throw away the intact older checkpoints. A
listed folder that exists without `revela_checkpoint.json` (written last), or with files shorter than it lists (a
copy into the storage path cut off), would pass Ray's check and then fail in every worker. Before a run starts,
`repair_snapshot` drops such checkpoints from the snapshot, so Ray resumes from the newest complete one; when none
is left it raises `LostCheckpointError` and leaves everything as it was.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from revela.retriever import CHECKPOINT_MARKER
from revela.train.runfolder import SNAPSHOT, write_json

log = logging.getLogger(__name__)

class LostCheckpointError(RuntimeError):
    """The run's checkpoints are all missing or incomplete; the message names them and what to run."""


def _complete(run_dir: Path, result: dict | None) -> bool:
    from revela.train.checkpoint import is_complete

    return bool(result) and is_complete(Path(run_dir, result["checkpoint_dir_name"]))


def _step(run_dir: Path, result: dict) -> int:
    try:
        return int(json.loads(Path(run_dir, result["checkpoint_dir_name"], CHECKPOINT_MARKER).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def repair_snapshot(run_dir: str | Path, run_name: str) -> list[str]:
    """Drop missing or incomplete checkpoints from the run's snapshot; returns their folder names (none: untouched).

    Raises LostCheckpointError, writing nothing, when no complete checkpoint would be left to resume from.
    """
    run_dir = Path(run_dir)
    path = run_dir / SNAPSHOT
    if not path.is_file():
        return []
    try:
        state = json.loads(path.read_text())
        results, indices = state["checkpoint_results"], state["checkpoint_report_indices"]
    except (ValueError, KeyError, TypeError) as e:
        raise LostCheckpointError(f"run {run_name!r}: {path} is not a readable Ray Train snapshot ({e}); pass "
                                  "--overwrite to start the run over") from None
    latest = state.get("latest_checkpoint_result")
    lost = [r["checkpoint_dir_name"] for r in results if not _complete(run_dir, r)]
    if latest and not _complete(run_dir, latest) and latest["checkpoint_dir_name"] not in lost:
        lost.append(latest["checkpoint_dir_name"])
    if not lost:
        return []
    kept = [(r, i) for r, i in zip(results, indices) if _complete(run_dir, r)]
    if not kept:
        raise LostCheckpointError(
            f"run {run_name!r}: checkpoint {', '.join(lost)} in {run_dir} is missing or incomplete and no older "
            "complete checkpoint is left to resume from; pass --overwrite to start the run over")
    newest = max(kept, key=lambda ri: (_step(run_dir, ri[0]), ri[1]))[0]
    names = {r["checkpoint_dir_name"] for r, _ in kept}
    pending = [(r, spec) for r, spec in zip(state.get("pending_training_results", []),
                                            state.get("pending_validation_specs", []))
               if r["checkpoint_dir_name"] in names]
    state.update(
        checkpoint_results=[r for r, _ in kept], checkpoint_report_indices=[i for _, i in kept],
        latest_checkpoint_result=newest, pending_training_results=[r for r, _ in pending],
        pending_validation_specs=[spec for _, spec in pending])
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):
        if key in state:
            state[key] = [name for name in state[key] if name in names]
    write_json(path, state, indent=None)
    log.warning("run %r: checkpoint %s missing or incomplete; resuming from %s (step %d)", run_name,
                ", ".join(lost), newest["checkpoint_dir_name"], _step(run_dir, newest))
    return lost
