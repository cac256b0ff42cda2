"""A two-node Ray cluster on this machine, loopback only, for the multi-node tests (tests/test_cluster.py).

`ray start --address` refuses to add a node while `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (what keeps every Ray
socket on 127.0.0.1, scripts/env.sh), and without it Ray binds to the machine's external address. So the nodes are
started the way Ray's own multi-node tests start them, `ray.cluster_utils.Cluster`: a head node (resource `node_a`,
with the dashboard for `ray job submit`) and a worker node (`node_b`), each a real raylet with its own object store
and worker processes, both registered at 127.0.0.1, each with a label `revela-node=a|b`. Killing a node kills its
raylet and every worker on it; nothing else on the machine is touched (never `ray stop`). Ray's temp dir is a private
short folder, so the cluster's address file never points another process's `ray.init()` here.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
HEAD_CPUS = 3
"""Logical CPUs, above the 2 physical ones on purpose (as the single-node tests): a Train worker, the data stream's
actor, an evaluation task and the Tune trial driver all need a share next to each other."""
WORKER_CPUS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoNodeCluster:
    """`start()` brings up the head and node B; `kill_node_b()` / `add_node_b()` take node B away and back."""

    def __init__(self, head_cpus: float = HEAD_CPUS, worker_cpus: float = WORKER_CPUS):
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.cluster = None
        self.node_b = None
        self.extra: dict[str, object] = {}
        self.dashboard_port = free_port()
        self._saved_env = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "PATH")}
        self.tmpdir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: Ray's socket paths live under it

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> "TwoNodeCluster":
        from ray.cluster_utils import Cluster

        os.environ["RAY_TMPDIR"] = self.tmpdir
        os.environ["PATH"] = f"{BIN}:{os.environ['PATH']}"  # a submitted job's `python` is the project's
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": self.head_cpus, "resources": {"node_a": 1}, "labels": {"revela-node": "a"},
            "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": self.dashboard_port,
            "object_store_memory": 300 * 2**20})
        self.add_node_b()
        self._wait_for_dashboard()
        return self

    def add_node(self, name: str, cpus: float, env: dict[str, str] | None = None):
        """Another worker node with resource `{name: 1}` and label `revela-node=<last letter>`; env: its raylet's
        (and so its workers') extra environment."""
        return self.cluster.add_node(num_cpus=cpus, resources={name: 1}, labels={"revela-node": name[-1]},
                                     object_store_memory=200 * 2**20, env_vars=env)

    def add_node_b(self):
        self.node_b = self.add_node("node_b", self.worker_cpus)
        self.cluster.wait_for_nodes()
        return self.node_b

    def kill_node_b(self) -> None:
        """Node B dies at once (SIGKILL to its raylet and all its processes), as a machine that goes away."""
        self.cluster.remove_node(self.node_b, allow_graceful=False)
        self.node_b = None

    def remove(self, node) -> None:
        self.cluster.remove_node(node, allow_graceful=False)

    def node_ids(self) -> dict[str, str]:
        """Resource name (node_a, node_b, ...) -> node id of each live node."""
        return {key: n["NodeID"] for n in self.cluster.global_state.node_table() if n["Alive"] for key in n["Resources"]
                if key.startswith("node_") and not key.startswith("node:")}

    def _wait_for_dashboard(self, timeout_s: float = 60) -> None:
        deadline = time.time() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=5):
                    return
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"the head's dashboard did not answer on {self.dashboard_url}")
                time.sleep(0.5)

    def shutdown(self) -> None:
        """Kill both nodes' processes (only this cluster's); restore RAY_TMPDIR and PATH."""
        import ray

        ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(self.tmpdir, ignore_errors=True)
