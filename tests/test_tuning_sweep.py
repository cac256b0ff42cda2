"""A 2x2 sweep (B x retriever size) of tiny models on one shared local Ray head: the sweep driver is killed
mid-sweep, the same command continues it (finished trials kept, the interrupted one resumed from its checkpoint),
and `revela report` writes the table and the plots."""

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from typer.testing import CliRunner

from revela.cli import app
from tiny import tiny_encoder, tiny_lm, tokenizer, write_json_dev_set

BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.timeout(1500), pytest.mark.slow, pytest.mark.sweep]  # generous: the 2 cores are often shared


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    """One Ray head for the module: the sweep drivers (separate processes, one of them killed) attach to it."""
    port = free_port()
    # no dashboard here, so no Train state tracking (its actor polls the dashboard's state API)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_TRAIN_ENABLE_STATE_TRACKING": "0"}
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "4", "--node-ip-address", "127.0.0.1",
           "--port", str(port), "--include-dashboard", "false", "--disable-usage-stats",
           "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port())]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 90
    while subprocess.run([str(BIN / "ray"), "status", "--address", address], env=env,
                         capture_output=True).returncode != 0:
        if time.time() > deadline or proc.poll() is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the Ray head did not come up")
        time.sleep(1)
    yield {"address": address, "env": env}
    os.killpg(proc.pid, signal.SIGTERM)  # only this head's processes, unlike `ray stop`
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    for leftover in psutil.process_iter():  # workers that left the head's process group, still in its session
        try:
            if os.getsid(leftover.pid) == proc.pid:
                leftover.kill()
        except (ProcessLookupError, psutil.Error):
            pass


def write_models(root: Path) -> dict[str, Path]:
    """Two tiny retrievers of different sizes and a tiny LM, saved as model folders (names resolve to them)."""
    from transformers import BertConfig, BertModel

    tok = tokenizer()
    large = BertModel(BertConfig(vocab_size=30522, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4), add_pooling_layer=False)
    paths = {}
    for name, model in (("small", tiny_encoder()), ("large", large), ("lm", tiny_lm())):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths[name] = root / name
    return paths


@pytest.fixture(scope="module")
def sweep_config(tmp_path_factory, head):
    root = tmp_path_factory.mktemp("sweep")
    models = write_models(root / "models")
    dev = write_json_dev_set(root / "dev")
    base = {
        "model": {"retriever": {"pooling": "mean", "max_length": 32, "finetune": "full"},
                  "lm": {"name": str(models["lm"]), "finetune": "full", "max_length": 32},
                  "objective": {"temperature": 0.05}},
        "data": {"sources": [str(Path(sysconfig.get_paths()["stdlib"]) / "json")], "max_words": 24,
                 "max_tokens": 32},
        "train": {"lr": 1e-3, "retriever_lr": 1e-3, "warmup_steps": 1, "heldout_groups": 0},
        "ray": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 1},
        "eval": {"max_queries": None, "num_cpus": 0.25, "batch_size": 16},
    }
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {"name": "grid", "base": "base.yaml", "datasets": [str(dev)], "budget": {"chunks": 24},
             "checkpoints": 2, "storage_path": str(root / "sweeps"), "ray_address": head["address"],
             # B=4 (6 steps) runs first, then B=3 (8 steps): the driver is killed part-way through a B=3 trial
             "axes": {"group_size": [4, 3],
                      "retriever": [{"label": "small", "name": str(models["small"])},
                                    {"label": "large", "name": str(models["large"])}]}}
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def metric_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


def registered_steps(run_dir: Path) -> list[int]:
    """Steps of the checkpoints Ray Train has registered (a checkpoint folder alone may be one it never committed)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return [int(r["metrics"]["step"]) for r in snapshot["checkpoint_results"]]


def test_two_by_two_sweep_survives_a_killed_driver_and_reports(head, sweep_config, tmp_path):
    sweep_dir = sweep_config.parent / "sweeps" / "grid"
    runs = sweep_dir / "runs"
    command = [str(BIN / "revela"), "sweep", "--config", str(sweep_config)]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, env=head["env"], stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:  # kill the driver once one trial has finished and another is part-way, past a checkpoint
        deadline, interrupted = time.time() + 720, None
        while time.time() < deadline and first.poll() is None:
            finished = sorted(p.parent.name for p in runs.glob("*/revela_trial.json"))
            partial = [d for d in runs.glob("*") if d.name not in finished and not (d / "revela_status.json").exists()
                       and registered_steps(d)]
            if finished and partial:
                interrupted = partial[0]
                break
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert interrupted is not None, (tmp_path / "first.log").read_text()[-4000:]
    kept = {name: (runs / name / "metrics.jsonl").read_text() for name in finished}
    checkpointed = max(registered_steps(interrupted))
    time.sleep(2)  # the dead driver's trial actors are cleaned up by Ray

    second = subprocess.run(command, env=head["env"], capture_output=True, text=True, timeout=600)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-4000:]
    assert "restoring the Tune experiment" in output  # Tuner.restore, not a fresh experiment

    plan = json.loads((sweep_dir / "sweep.json").read_text())
    assert plan["order"] == ["b4-small-lm-s42", "b4-large-lm-s42", "b3-small-lm-s42", "b3-large-lm-s42"]
    for name in finished:  # kept as they were, not trained again
        assert (runs / name / "metrics.jsonl").read_text() == kept[name]
    steps = metric_steps(interrupted)
    max_steps = plan["trials"][interrupted.name]["run"]["train"]["max_steps"]
    assert steps[-1] == max_steps
    assert steps.count(1) == 1  # resumed from its checkpoint, not restarted from step 1
    assert all(steps.count(s) == 1 for s in range(1, checkpointed + 1))

    for name in plan["order"]:
        record = json.loads((runs / name / "revela_trial.json").read_text())
        group_size = plan["trials"][name]["params"]["group_size"]
        assert record["chunks_seen"] == 24 and record["steps"] == 24 // group_size  # equal chunks budget
        assert record["tokens_seen"] > 0 and record["flops"] > 0 and record["gpu_hours"] == 0
        assert record["final"]["step"] == record["steps"]
        assert 0 <= record["best"]["metrics"]["dev_ndcg_at_10"] <= 1
        assert 0 <= record["backbone"]["metrics"]["dev_ndcg_at_10"] <= 1
    records = {n: json.loads((runs / n / "revela_trial.json").read_text()) for n in plan["order"]}
    assert records["b3-large-lm-s42"]["retriever_params"] > records["b3-small-lm-s42"]["retriever_params"]
    # same chunks, more in-batch attention per chunk at the larger B
    assert records["b4-small-lm-s42"]["flops_by_part"]["inbatch_attention"] > \
        records["b3-small-lm-s42"]["flops_by_part"]["inbatch_attention"]

    out = CliRunner().invoke(app, ["report", str(sweep_dir)])
    assert out.exit_code == 0, out.output
    report = sweep_dir / "report"
    table = pd.read_parquet(report / "results.parquet")
    assert len(table) == 4 * 2 * 4  # trials x (dev set + mean) x metrics
    csv = pd.read_csv(report / "results.csv")
    assert list(csv.columns) == list(table.columns) and len(csv) == len(table)
    assert set(table["dataset"]) == {"mean", "dev"}
    mean = table[(table["dataset"] == "mean") & (table["metric"] == "ndcg_at_10")].set_index("trial")
    for name, record in records.items():
        assert mean.loc[name, "best"] == pytest.approx(record["best"]["metrics"]["dev_ndcg_at_10"])
        assert mean.loc[name, "run_dir"] == str(runs / name)
    summary = (report / "summary.md").read_text()
    assert "trials finished: 4 of 4" in summary and all(str(runs / n) in summary for n in records)
    for png in ("ndcg_vs_group_size", "ndcg_vs_model_size", "ndcg_vs_compute", "training_curves"):
        assert (report / f"{png}.png").stat().st_size > 10_000, png

    # a changed config under the same name is refused before anything runs
    out = CliRunner().invoke(app, ["sweep", "--config", str(sweep_config), "budget.chunks=32"])
    assert out.exit_code == 2
    assert "different config" in out.output and "--resume" in out.output
