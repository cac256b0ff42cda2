"""The main job on Ray Train with tiny models: DDP on 2 CPU workers, checkpoints, resume, guards, failures.

One local Ray cluster for the module; each test uses its own run name under tmp storage.
"""

import json
import os
import re
import shutil
import signal
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import ray

from revela.config import RunConfig
from revela.configbase import load_config
from revela.train.checkpoint import is_complete
from revela.train.driver import RunConflictError, TrainingStoppedError, run
from console_checks import false_alarms
from tiny import tiny_run_overrides, write_json_dev_set, write_tiny_run_assets

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_cluster():
    from revela.train.ray_setup import ensure_ray

    ensure_ray(None)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_tiny_run_assets(tmp_path_factory.mktemp("assets"))


def config(assets, tmp_path, name, num_workers=2, **train):
    return load_config(RunConfig, None, tiny_run_overrides(assets, tmp_path, name, num_workers, **train))


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())


def steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


def test_two_worker_run_writes_checkpoints_metrics_and_report(ray_cluster, assets, tmp_path, capfd):
    cfg = config(assets, tmp_path, "two-workers", groups_per_forward=2)
    report = run(cfg)
    # the console of a clean run on the embedded Ray: one line per step and per checkpoint, no false alarms
    # (Ray's log monitor forwards worker and actor output to this process's stdout/stderr)
    out = "".join(capfd.readouterr())
    assert not false_alarms(out), out[-5000:]
    assert [line.split(" |")[0] for line in out.splitlines() if line.startswith("step ")] == \
        ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    assert sum(line.startswith("checkpoint step ") for line in out.splitlines()) == 2
    # the embedded Ray's dashboard serves what Train's state tracking records (the Train page)
    from ray._private.worker import get_dashboard_url

    with urllib.request.urlopen(f"http://{get_dashboard_url()}/api/train/v2/runs/v1", timeout=30) as r:
        assert r.status == 200 and '"two-workers"' in r.read().decode()
    run_dir = tmp_path / "two-workers"
    ckpts = checkpoints(run_dir)
    assert len(ckpts) == 2 and all(is_complete(c) for c in ckpts)
    assert json.loads((ckpts[-1] / "revela_checkpoint.json").read_text())["step"] == 4
    assert steps(run_dir) == [1, 2, 3, 4]  # rank 0 logs every step once
    metrics = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("loss", "pass2_loss", "loss_gap", "sim_entropy", "sim_top1_weight", "grad_norm_retriever",
                "grad_norm_lm", "tokens_per_s", "groups_per_s", "data_wait_fraction"):
        assert key in metrics, key
    assert metrics["groups"] == 2 and metrics["groups_per_forward"] == 2  # G groups in each forward
    # temperature: auto, calibrated on rank 0 and broadcast: one tau in every row, the file, the report
    calibration = json.loads((run_dir / "temperature.json").read_text())
    assert calibration["source"] == "calibrated" and calibration["groups"] >= 8
    assert {json.loads(line)["temperature"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()} \
        == {calibration["temperature"]}
    assert "temperature: auto -> " in out
    assert report["sim_health"]["status"] in ("ok", "one-hot", "uniform") and report["temperature"] == \
        calibration["temperature"]
    assert report["heldout"]["after"]["groups"] == 2
    assert (run_dir / "report.json").is_file() and (run_dir / "loss_curve.png").stat().st_size > 1000


def test_finished_or_changed_run_is_refused_unless_asked(ray_cluster, assets, tmp_path):
    cfg = config(assets, tmp_path, "guarded", num_workers=1, max_steps=2, heldout_groups=0, checkpoint_every=1)
    run(cfg)
    with pytest.raises(RunConflictError, match="already finished"):
        run(cfg)
    changed = config(assets, tmp_path, "guarded", num_workers=1, max_steps=2, heldout_groups=0, checkpoint_every=1,
                     lr=5e-4)
    with pytest.raises(RunConflictError, match="different config"):
        run(changed)
    # asked to resume with more steps, after the newest checkpoint was lost (deleted, a failed disk): resume repairs
    # Ray's snapshot and continues from the step-1 checkpoint instead of failing or starting over
    calibrated = json.loads((tmp_path / "guarded" / "temperature.json").read_text())
    assert calibrated["source"] == "calibrated"
    shutil.rmtree(checkpoints(tmp_path / "guarded")[-1])
    more = config(assets, tmp_path, "guarded", num_workers=1, max_steps=3, heldout_groups=0, checkpoint_every=1)
    report = run(more, mode="resume")
    assert steps(tmp_path / "guarded") == [1, 2, 2, 3]
    # temperature: auto is not calibrated again on resume: tau comes from the checkpoint
    resumed = json.loads((tmp_path / "guarded" / "temperature.json").read_text())
    assert resumed["source"] == "checkpoint" and resumed["temperature"] == calibrated["temperature"]
    assert report["temperature"] == calibrated["temperature"] == report["sim_health"]["temperature"]
    for c in checkpoints(tmp_path / "guarded"):
        assert json.loads((c / "revela_checkpoint.json").read_text())["temperature"] == calibrated["temperature"]
    assert [json.loads((c / "revela_checkpoint.json").read_text())["step"] for c in checkpoints(tmp_path / "guarded")] \
        == [2, 3]


def test_killed_worker_resumes_from_last_checkpoint(ray_cluster, assets, tmp_path):
    cfg = config(assets, tmp_path, "killed", max_steps=6, checkpoint_every=2)
    run_dir = tmp_path / "killed"
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(report=run(cfg)))
    thread.start()
    deadline = time.time() + 300
    while time.time() < deadline and len(steps(run_dir)) < 3:  # past the step-2 checkpoint
        time.sleep(0.5)
    # this test process started the local Ray, so the Train workers are among its descendants
    workers = [p for p in psutil.Process().children(recursive=True)
               if " ".join(p.cmdline()).startswith("ray::RayTrainWorker")]
    assert len(workers) == 2, [p.cmdline() for p in workers]
    os.kill(workers[1].pid, signal.SIGKILL)
    thread.join(timeout=360)
    assert "report" in outcome, "the run did not finish after the worker was killed"
    logged = steps(run_dir)
    assert logged[-1] == 6
    assert len(logged) > len(set(logged))  # steps after the last checkpoint were trained again
    assert all(is_complete(c) for c in checkpoints(run_dir))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(ray_cluster, assets, tmp_path):
    # Adam moves every weight by ~lr: at 1e30 the next forward overflows fp32 and the loss is NaN
    cfg = config(assets, tmp_path, "diverges", num_workers=2, heldout_groups=0, max_steps=6, checkpoint_every=1, lr=1e30, max_grad_norm="null",
                 warmup_steps=0)
    with pytest.raises(TrainingStoppedError, match="non-finite|is nan|is inf"):
        run(cfg)
    ckpts = checkpoints(tmp_path / "diverges")
    assert ckpts and all(is_complete(c) for c in ckpts)
    last = json.loads((ckpts[-1] / "revela_checkpoint.json").read_text())
    assert last["step"] < 6


def test_checkpoints_are_scored_by_evaluation_tasks_while_training_continues(ray_cluster, assets, tmp_path, capfd):
    dev = write_json_dev_set(tmp_path / "dev")
    cfg = load_config(RunConfig, None, tiny_run_overrides(
        assets, tmp_path, "scored", num_workers=1, max_steps=16, checkpoint_every=4, heldout_groups=0)
        + [f"eval.datasets=[{dev}]", "eval.num_cpus=0.25", "train.keep_checkpoints=4"])
    report = run(cfg)
    run_dir = tmp_path / "scored"
    kept = report["checkpoints"]
    assert len(kept) == 4
    assert all(0.0 <= row["dev_ndcg_at_10"] <= 1.0 for row in kept), kept  # every checkpoint was scored
    scores = [row["dev_ndcg_at_10"] for row in kept]
    assert scores == sorted(scores, reverse=True)  # best first
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = next(c for c in checkpoints(run_dir)
                 if json.loads((c / "revela_checkpoint.json").read_text())["step"] == 4)
    scored_at = (first / "revela_eval.json").stat().st_mtime
    # the step-4 checkpoint was scored before training finished: evaluation ran beside training, not after it
    assert scored_at < history[-1]["wall_time"]
    # the console's checkpoint lines carry the dev score
    lines = [line for line in capfd.readouterr().out.splitlines() if line.startswith("checkpoint step ")]
    assert len(lines) == 4 and all(re.search(r"dev_ndcg_at_10 [01]\.\d{4}", line) for line in lines), lines


def test_fsdp_on_two_cpu_workers_checkpoints_full_weights(ray_cluster, assets, tmp_path):
    from safetensors.torch import load_file

    from revela.retriever import Retriever
    from tiny import tiny_encoder

    cfg = config(assets, tmp_path, "fsdp", max_steps=2, checkpoint_every=2, heldout_groups=0)
    cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"strategy": "fsdp"})})
    run(cfg)
    ckpt = checkpoints(tmp_path / "fsdp")[-1]
    saved = load_file(ckpt / "trainable.safetensors")
    reference = dict(tiny_encoder().named_parameters())
    for name, tensor in saved.items():  # whole tensors, not the rank-0 shard
        if name.startswith("retriever.backbone.") and name[len("retriever.backbone."):] in reference:
            assert tensor.shape == reference[name[len("retriever.backbone."):]].shape, name
    emb = Retriever.load(str(ckpt)).encode(["def f(): pass", "import json"], "query")
    assert emb.shape == (2, 32)
