"""Is the storage path one file system for every node? A marker the driver writes, checked before anyone writes.

On one machine every path is shared. On a cluster, `ray.storage_path` (and a sweep's folder) must be a path every
node mounts: Train workers write checkpoints, metrics.jsonl and the status there, evaluation tasks write scores,
and the driver reads all of it back (console, report, resume). A node-local path of the same name would not fail:
each node would quietly write its own half of the run where the driver never looks.

So the driver writes `<folder>/.revela-storage/<token>.json` (a new token per run start) and hands `{"dir",
"token"}` to every Train worker, evaluation task and sweep trial, which call `check_marker` before they write. A
node that does not see the file stops the run with one line naming the node and the path. Markers are never
removed by a run (a few bytes each): a restored Tune trial or a pending validation still holds an older token.
Each Train rank also records where it ran (`<token>.rank<r>.json`: node id, IP, host, pid), for the curious.

`REVELA_NODE_ROOT` (tests only) makes a node look at the file system as if it were mounted under that folder,
which is how the tests give one node of a one-machine cluster a disk of its own.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path

from revela.train.runfolder import write_json

MARKER_DIR = ".revela-storage"
NODE_ROOT_ENV = "REVELA_NODE_ROOT"
PREFIX = "storage not shared:"


class StorageNotSharedError(RuntimeError):
    """This node does not see the driver's storage folder: the storage path is not shared."""


def node_description() -> str:
    """`node 127.0.0.1 (id 1a2b3c4d, host h)` for the node this process runs on."""
    node_id, ip = _node_identity()
    return f"node {ip} (id {node_id[:8]}, host {socket.gethostname()})"


def _node_identity() -> tuple[str, str]:
    import ray

    if not ray.is_initialized():
        return "-", "local"
    ctx = ray.get_runtime_context()
    return ctx.get_node_id(), ray.util.get_node_ip_address()


def _seen_from_this_node(path: Path) -> Path:
    root = os.environ.get(NODE_ROOT_ENV)
    return Path(root, *path.absolute().parts[1:]) if root else path


def visible(path: str | Path) -> bool:
    """Whether this node sees `path` (a file); REVELA_NODE_ROOT applies as in `check_marker`."""
    return _seen_from_this_node(Path(path)).is_file()


def _marker_path(folder: str | Path, token: str) -> Path:
    return Path(folder) / MARKER_DIR / f"{token}.json"


def write_marker(folder: str | Path) -> dict:
    """Mark `folder` (a run or sweep folder) for this run start; returns the marker to hand to workers and tasks."""
    folder = Path(folder).absolute()
    token = uuid.uuid4().hex
    path = _marker_path(folder, token)
    path.parent.mkdir(parents=True, exist_ok=True)
    node_id, ip = _node_identity()
    write_json(path, {"token": token, "node_id": node_id, "node_ip": ip, "host": socket.gethostname(),
                      "pid": os.getpid(), "written_at": time.time()}, indent=None)
    return {"dir": str(folder), "token": token}


def check_marker(marker: dict | None, who: str) -> None:
    """Raise StorageNotSharedError (one line) unless this node sees the driver's marker; None: nothing to check."""
    if not marker:
        return
    path = _marker_path(marker["dir"], marker["token"])
    if not visible(path):
        raise StorageNotSharedError(
            f"{PREFIX} the {who} on {node_description()} does not see {path}, which the driver wrote; "
            f"put the storage path ({marker['dir']}) on a file system every node mounts at the same path, "
            "see docs/cluster.md")


def record_rank(marker: dict | None, rank: int) -> None:
    """After `check_marker`: note where this Train rank runs (the latest attempt wins)."""
    if not marker:
        return
    node_id, ip = _node_identity()
    path = _marker_path(marker["dir"], marker["token"]).with_name(f"{marker['token']}.rank{rank}.json")
    write_json(path, {"rank": rank, "node_id": node_id, "node_ip": ip, "host": socket.gethostname(),
                      "pid": os.getpid(), "started_at": time.time()}, indent=None)


def ranks(marker: dict) -> dict[int, dict]:
    """The rank records of a run start: rank -> {node_id, node_ip, host, pid, started_at}."""
    folder = Path(marker["dir"]) / MARKER_DIR
    return {int(p.name.rsplit(".rank", 1)[1].split(".")[0]): json.loads(p.read_text())
            for p in folder.glob(f"{marker['token']}.rank*.json")}


def confirm_worker(marker: dict | None, rank: int) -> None:
    """A Train worker's first step: refuse on a node that does not share the storage, else record the rank."""
    check_marker(marker, f"Train worker (rank {rank})")
    record_rank(marker, rank)


def storage_failure(error: BaseException) -> StorageNotSharedError | None:
    """The one-line StorageNotSharedError behind a failed fit (a worker's, or one raised in a Ray task), if any."""
    seen, todo = set(), [error]
    while todo:
        err = todo.pop()
        if not isinstance(err, BaseException) or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, StorageNotSharedError):  # Ray's wrapper of a task's error is an instance too
            text = str(err)
            line = next((ln[ln.index(PREFIX):] for ln in text.splitlines() if PREFIX in ln), text)
            return StorageNotSharedError(line)
        todo.extend([err.__cause__, err.__context__, getattr(err, "cause", None),
                     *getattr(err, "worker_failures", {}).values()])
    # raised in a Ray Data task and re-raised by the library in its own type: only the text is left
    line = next((ln[ln.index(PREFIX):] for ln in str(error).splitlines() if PREFIX in ln), None)
    return StorageNotSharedError(line) if line else None
