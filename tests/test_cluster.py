"""The platform on two Ray nodes (tests/cluster.py: a head and a worker node on this machine, loopback only).

- a run whose two Train workers are placed on different nodes by `ray.placement_strategy` trains, checkpoints, is
  scored by evaluation tasks, reports, and resumes with more steps;
- killing the worker node mid-run: the run continues from its last registered checkpoint once the node is back,
  and the run folder stays consistent; with no restart left it stops with one line saying what it lost;
- a node whose disk is not the driver's (simulated with REVELA_NODE_ROOT) is refused with one line, by a Train worker
  placed there through `ray.label_selector` and by an evaluation task;
- `ray job submit` of the README's command places the workers on both nodes; a two-cell `revela sweep` (driver on the
  head) trains every trial on node B through `ray.resources_per_worker`.

A marked stage (`scripts/test.sh -m cluster`, run by CI after the suite): a few minutes on 2 cores.
"""

import json
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import ray
import yaml

from cluster import TwoNodeCluster
from revela.config import RunConfig
from revela.configbase import load_config
from revela.retriever import CHECKPOINT_MARKER
from revela.train.driver import TrainingStoppedError, run
from revela.train.ray_setup import ensure_ray
from revela.train.resume import SNAPSHOT, repair_snapshot
from revela.train.storage import MARKER_DIR, NODE_ROOT_ENV, StorageNotSharedError, write_marker
from tiny import tiny_encoder, tiny_lm, tiny_run_overrides, tokenizer, write_json_dev_set, write_tiny_run_assets

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def cluster():
    nodes = TwoNodeCluster().start()
    ensure_ray(nodes.address)  # this test process is the driver of the runs below, as `revela train` would be
    yield nodes
    nodes.shutdown()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_tiny_run_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    return write_json_dev_set(tmp_path_factory.mktemp("dev") / "dev")


def config(assets, storage, name, *extra, **train):
    return load_config(RunConfig, None, tiny_run_overrides(assets, storage, name, **train) + list(extra))


def steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


def rank_nodes(run_dir: Path) -> list[dict[int, str]]:
    """Per run start (oldest first): rank -> node id, from the records each Train worker writes."""
    markers = sorted((p for p in (run_dir / MARKER_DIR).glob("*.json") if ".rank" not in p.name),
                     key=lambda p: p.stat().st_mtime)
    starts = []
    for marker in markers:
        ranks = {int(p.name.rsplit(".rank", 1)[1][:-5]): json.loads(p.read_text())["node_id"]
                 for p in marker.parent.glob(f"{marker.stem}.rank*.json")}
        if ranks:
            starts.append(ranks)
    return starts


def registered_steps(run_dir: Path) -> list[int]:
    try:
        return [int(r["metrics"]["step"]) for r in json.loads((run_dir / SNAPSHOT).read_text())["checkpoint_results"]]
    except (OSError, ValueError, KeyError):
        return []


def assert_consistent(run_dir: Path) -> None:
    """Every checkpoint folder complete, nothing half-written, Ray's snapshot naming only complete checkpoints."""
    folders = [p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(("checkpoint_", ".checkpoint"))]
    assert folders and all((p / CHECKPOINT_MARKER).is_file() for p in folders), folders
    assert repair_snapshot(run_dir, run_dir.name) == []  # no checkpoint in the snapshot is missing or incomplete
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_workers_on_two_nodes_train_are_scored_report_and_resume(cluster, assets, dev, tmp_path):
    ids = cluster.node_ids()
    placed = ["ray.placement_strategy=SPREAD", f"eval.datasets=[{dev}]", "eval.num_cpus=0.25",
              f"ray.address={cluster.address}"]
    report = run(config(assets, tmp_path, "spread", *placed, num_workers=2, heldout_groups=2))
    run_dir = tmp_path / "spread"
    assert rank_nodes(run_dir) == [{0: ids["node_a"], 1: ids["node_b"]}] or \
        rank_nodes(run_dir) == [{0: ids["node_b"], 1: ids["node_a"]}]  # one worker on each node
    assert report["steps"] == 4 and steps(run_dir) == [1, 2, 3, 4]
    scores = [row["dev_ndcg_at_10"] for row in report["checkpoints"]]
    assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)  # both checkpoints scored by evaluation tasks
    assert len((run_dir / "dev_scores.jsonl").read_text().splitlines()) == 2
    assert report["heldout"]["after"]["groups"] == 2  # held-out scoring in the driver, on the checkpoint
    assert (run_dir / "report.json").is_file()
    assert_consistent(run_dir)

    more = run(config(assets, tmp_path, "spread", *placed, num_workers=2, heldout_groups=2, max_steps=6),
               mode="resume")
    assert more["steps"] == 6 and steps(run_dir) == [1, 2, 3, 4, 5, 6]  # continued from step 4, not retrained
    assert set(rank_nodes(run_dir)[-1].values()) == {ids["node_a"], ids["node_b"]}
    assert_consistent(run_dir)


def test_a_killed_node_is_waited_for_and_the_run_continues_from_its_checkpoint(cluster, assets, tmp_path):
    cfg = config(assets, tmp_path, "node-lost", "ray.placement_strategy=STRICT_SPREAD",
                 f"ray.address={cluster.address}", num_workers=2, heldout_groups=0, max_steps=8, checkpoint_every=2)
    run_dir, outcome = tmp_path / "node-lost", {}
    thread = threading.Thread(target=lambda: outcome.update(report=run(cfg)))
    thread.start()
    deadline = time.time() + 300
    while time.time() < deadline and not registered_steps(run_dir) and thread.is_alive():
        time.sleep(0.2)
    checkpointed = max(registered_steps(run_dir))
    cluster.kill_node_b()  # node B's raylet and its worker go at once; STRICT_SPREAD cannot place 2 workers now
    time.sleep(5)
    new_b = cluster.add_node_b()
    thread.join(timeout=400)
    assert "report" in outcome, "the run did not finish after the node came back"
    logged = steps(run_dir)
    assert logged[-1] == 8 and outcome["report"]["steps"] == 8
    assert logged.count(1) == 1 and all(logged.count(s) == 1 for s in range(1, checkpointed + 1))  # resumed
    # the restarted worker group used the node that came back (ranks are assigned afresh)
    assert set(rank_nodes(run_dir)[-1].values()) == {cluster.node_ids()["node_a"], new_b.node_id}
    assert_consistent(run_dir)


def test_with_no_restart_left_a_lost_node_stops_the_run_in_one_line(cluster, assets, tmp_path):
    cfg = config(assets, tmp_path, "no-retry", "ray.placement_strategy=STRICT_SPREAD", "ray.max_failures=0",
                 f"ray.address={cluster.address}", num_workers=2, heldout_groups=0, max_steps=200, checkpoint_every=2)
    run_dir, outcome = tmp_path / "no-retry", {}

    def train():
        try:
            run(cfg)
        except TrainingStoppedError as err:
            outcome["error"] = err

    thread = threading.Thread(target=train)
    thread.start()
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not registered_steps(run_dir) and thread.is_alive():
            time.sleep(0.2)
        cluster.kill_node_b()
        thread.join(timeout=300)
    finally:
        if cluster.node_b is None:
            cluster.add_node_b()
    message = str(outcome["error"])
    assert "\n" not in message
    assert message.startswith("run 'no-retry' stopped: the worker rank ") and "(ray.max_failures=0)" in message
    assert "the run continues from step " in message, message
    assert_consistent(run_dir)


def test_a_node_that_does_not_share_the_storage_is_refused_in_one_line(cluster, assets, dev, tmp_path):
    elsewhere = tmp_path / "node-c-disk"
    elsewhere.mkdir()
    node_c = cluster.add_node("node_c", 1, env={NODE_ROOT_ENV: str(elsewhere)})
    try:
        cfg = config(assets, tmp_path / "runs", "not-shared", "ray.label_selector={revela-node: c}",
                     "ray.max_failures=0", f"ray.address={cluster.address}", num_workers=1, heldout_groups=0)
        with pytest.raises(TrainingStoppedError) as err:
            run(cfg)
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"storage not shared: the Train worker (rank 0) on node 127.0.0.1 (id "
                                  f"{node_c.node_id[:8]}, ")
        run_dir = tmp_path / "runs" / "not-shared"
        assert not list(run_dir.glob("checkpoint_*")) and not (run_dir / "metrics.jsonl").exists()

        from revela.evaluation.actors import score_checkpoint

        marker = write_marker(run_dir)
        task = ray.remote(score_checkpoint).options(num_cpus=0, resources={"node_c": 0.01}, max_retries=0)
        with pytest.raises(StorageNotSharedError, match=r"storage not shared: the evaluation task on node "):
            ray.get(task.remote(str(run_dir / "checkpoint_x"), [str(dev)], storage=marker))
    finally:
        cluster.remove(node_c)


def test_ray_job_submit_places_the_workers_on_both_nodes(cluster, assets, tmp_path):
    storage = tmp_path / "runs"
    config_file = tmp_path / "job.yaml"
    config_file.write_text(yaml.safe_dump({"ray": {"placement_strategy": "SPREAD"}}))
    overrides = tiny_run_overrides(assets, storage, "submitted", num_workers=2, max_steps=2, checkpoint_every=1,
                                   heldout_groups=0)
    submit = [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(ROOT),
              "--runtime-env", str(ROOT / "jobs" / "runtime_env.yaml"), "--submission-id", "revela-cluster-job",
              "--", "python", "jobs/train.py", "--config", str(config_file), *overrides]
    out = subprocess.run(submit, capture_output=True, text=True, timeout=400)
    with urllib.request.urlopen(f"{cluster.dashboard_url}/api/jobs/revela-cluster-job", timeout=10) as r:
        job = json.loads(r.read())
    assert job["status"] == "SUCCEEDED", out.stdout[-3000:] + out.stderr[-3000:]
    run_dir = storage / "submitted"
    ids = cluster.node_ids()
    assert set(rank_nodes(run_dir)[-1].values()) == {ids["node_a"], ids["node_b"]}
    assert json.loads((run_dir / "report.json").read_text())["steps"] == 2
    assert "step 2/2 | loss" in out.stdout
    assert_consistent(run_dir)


def test_a_two_cell_sweep_trains_on_the_node_its_driver_is_not_on(cluster, dev, tmp_path):
    models = {}
    for name, model in (("small", tiny_encoder()), ("lm", tiny_lm())):
        model.save_pretrained(tmp_path / "models" / name)
        tokenizer().save_pretrained(tmp_path / "models" / name)
        models[name] = str(tmp_path / "models" / name)
    base = {
        "model": {"retriever": {"name": models["small"], "pooling": "mean", "max_length": 32, "finetune": "full"},
                  "lm": {"name": models["lm"], "finetune": "full", "max_length": 32},
                  "objective": {"temperature": 0.05}},
        "data": {"sources": [str(Path(sysconfig.get_paths()["stdlib"]) / "json")], "max_words": 24,
                 "max_tokens": 32},
        "train": {"lr": 1e-3, "retriever_lr": 1e-3, "warmup_steps": 1, "heldout_groups": 0},
        # every trial's Train worker on node B (a custom resource only node B has), the sweep driver on the head
        "ray": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 1, "resources_per_worker": {"node_b": 0.5}},
        "eval": {"max_queries": None, "num_cpus": 0.25, "batch_size": 16},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {"name": "two-cells", "base": "base.yaml", "datasets": [str(dev)], "budget": {"chunks": 16},
             "checkpoints": 1, "storage_path": str(tmp_path / "sweeps"), "ray_address": cluster.address,
             "axes": {"group_size": [4, 3]}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    out = subprocess.run([str(BIN / "revela"), "sweep", "--config", str(tmp_path / "sweep.yaml")],
                         capture_output=True, text=True, timeout=500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = tmp_path / "sweeps" / "two-cells" / "runs"
    trials = sorted(p.name for p in runs.iterdir())
    assert len(trials) == 2
    for name in trials:
        record = json.loads((runs / name / "revela_trial.json").read_text())
        assert record["chunks_seen"] >= 12 and 0 <= record["best"]["metrics"]["dev_ndcg_at_10"] <= 1
        assert_consistent(runs / name)
    assert {rank_nodes(runs / name)[-1][0] for name in trials} == {cluster.node_ids()["node_b"]}
