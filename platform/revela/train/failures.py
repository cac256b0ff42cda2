"""One line for a Train run that failed for a reason outside the code: storage not shared, or a worker's node lost.

Ray Train retries a failed worker group `ray.max_failures` times from the last registered checkpoint. When a node
goes away for good (or more often than that), `fit` raises a `TrainingFailedError` whose text is every rank's
traceback (gloo's "Connection reset by peer" on the survivors, a failed health check on the lost one). What a user
needs is which node was lost, which checkpoint the run can continue from and which steps are gone: `explain_failure`
says that in one line. Other failures (a bug in the code) keep their tracebacks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from revela.retriever import CHECKPOINT_MARKER
from revela.train.runfolder import METRICS_FILE, SNAPSHOT
from revela.train.storage import storage_failure

_NODE = re.compile(r"node_id='([0-9a-f]+)',\s*node_ip='([^']*)'")


def lost_workers(error: BaseException) -> list[str]:
    """'rank R on node IP (id XXXXXXXX)' for every rank whose worker stopped answering (health check failed)."""
    try:
        from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
    except ImportError:  # another Ray layout: no one-line summary, the original error stands
        return []
    lost = []
    for rank, failure in sorted(getattr(error, "worker_failures", {}).items()):
        if isinstance(failure, WorkerHealthCheckFailedError):
            found = _NODE.search(str(failure))
            where = f"node {found.group(2)} (id {found.group(1)[:8]})" if found else "its node"
            lost.append(f"rank {rank} on {where}")
    return lost


def resumable_step(run_dir: Path) -> tuple[int, str] | None:
    """(step, folder) of the checkpoint a re-run continues from: the latest one Ray Train registered, if complete."""
    from revela.train.checkpoint import is_complete

    try:
        latest = json.loads((run_dir / SNAPSHOT).read_text()).get("latest_checkpoint_result") or {}
        name = latest["checkpoint_dir_name"]
        if not is_complete(run_dir / name):
            return None
        return int(json.loads((run_dir / name / CHECKPOINT_MARKER).read_text())["step"]), name
    except (OSError, ValueError, KeyError, TypeError):
        return None


def trained_steps(run_dir: Path) -> int:
    """The highest step metrics.jsonl logged (a line cut short by a lost node is skipped: only the maximum matters)."""
    path = run_dir / METRICS_FILE
    steps = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the lost node
    return max(steps, default=0)


def explain_failure(name: str, run_dir: Path, error: BaseException, max_failures: int) -> str | None:
    """The one-line reason a failed fit stopped, or None when it is an ordinary error (keep its traceback)."""
    shared = storage_failure(error)
    if shared is not None:
        return str(shared)
    lost = lost_workers(error)
    if not lost:
        return None
    where = "; ".join(lost)
    checkpoint = resumable_step(run_dir)
    trained = trained_steps(run_dir)
    if checkpoint is None:
        kept = (f"no complete checkpoint was registered, so steps 1-{trained} are lost and a re-run starts over"
                if trained else "no step was trained")
    else:
        step, folder = checkpoint
        gone = f"steps {step + 1}-{trained} trained after it are lost" if trained > step else "no step is lost"
        kept = f"the run continues from step {step} ({folder}) when re-run; {gone}"
    return (f"run {name!r} stopped: the worker {where} stopped answering (its node or process died) and no restart "
            f"is left (ray.max_failures={max_failures}); {kept}")
