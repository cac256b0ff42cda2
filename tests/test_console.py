"""The driver's run display (revela.train.console) and Ray's switches for a quiet run (revela.train.ray_setup),
without a cluster: metrics.jsonl and checkpoints are written here the way rank 0 and Ray write them."""

import io
import json
from pathlib import Path

import pytest

from revela.train.console import RunConsole, StepClock, duration, final_summary, step_line
from revela.train.ray_setup import state_api_env, train_logging


def row(step, t, **extra):
    return {"step": step, "wall_time": t, "loss": 3.0 - 0.1 * step, "pass2_loss": 3.1, "sim_entropy": 1.5,
            "groups_per_s": 2.0, "data_wait_fraction": 0.05, **extra}


def append(path: Path, *rows, tail: str = ""):
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows) + tail)


def checkpoint(run_dir: Path, name: str, step: int, dev: float | None = None) -> Path:
    path = run_dir / name
    path.mkdir()
    (path / "revela_checkpoint.json").write_text(json.dumps({"step": step, "metrics": {"loss": 2.5}}))
    if dev is not None:
        (path / "revela_eval.json").write_text(json.dumps({"metrics": {"dev_ndcg_at_10": dev}}))
    return path


def test_plain_console_prints_one_line_per_log_interval_and_per_checkpoint(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    append(metrics, row(1, 100.0))  # an earlier (resumed) run's row: not news
    checkpoint(tmp_path, "checkpoint_old", 1)
    out = io.StringIO()
    console = RunConsole(tmp_path, max_steps=6, log_every=2, stream=out, interactive=False, poll_s=3600)
    with console:
        append(metrics, row(2, 110.0), row(3, 112.0), tail='{"step": 4, "wall')  # rank 0 mid-write
        console.poll()
        with open(metrics, "a") as f:
            f.write('_time": 114.0, "loss": 2.6}\n')
        append(metrics, row(5, 116.0), row(6, 118.0))
        checkpoint(tmp_path, "checkpoint_b", 6)
    lines = out.getvalue().splitlines()
    assert [line.split(" |")[0] for line in lines] == ["step 2/6", "step 4/6", "step 6/6", "checkpoint step 6"]
    assert lines[1] == "step 4/6 | loss 2.6000 | pass-2 - | Sim H - | - groups/s | data wait - | ETA 0:00:04"
    assert lines[2].startswith("step 6/6 | loss 2.4000 | pass-2 3.1000 | Sim H 1.500 | 2.00 groups/s | data wait 5%")
    assert lines[3] == f"checkpoint step 6 | loss 2.5000 | {tmp_path / 'checkpoint_b'}"


def test_checkpoint_line_waits_for_its_dev_score(tmp_path):
    out = io.StringIO()
    console = RunConsole(tmp_path, max_steps=8, eval_metric="dev_ndcg_at_10", stream=out, interactive=False,
                         poll_s=3600)
    with console:
        first = checkpoint(tmp_path, "checkpoint_a", 4)
        console.poll()
        assert out.getvalue() == ""  # scored by an evaluation task a little later
        (first / "revela_eval.json").write_text(json.dumps({"metrics": {"dev_ndcg_at_10": 0.41234}}))
        console.poll()
        checkpoint(tmp_path, "checkpoint_b", 8)  # never scored before the run ends
    assert out.getvalue().splitlines() == [
        f"checkpoint step 4 | loss 2.5000 | dev_ndcg_at_10 0.4123 | {first}",
        f"checkpoint step 8 | loss 2.5000 | dev_ndcg_at_10 not scored | {tmp_path / 'checkpoint_b'}"]


def test_terminal_console_draws_a_progress_bar(tmp_path):
    out = io.StringIO()
    console = RunConsole(tmp_path, max_steps=4, stream=out, interactive=True, poll_s=3600)
    with console:
        append(tmp_path / "metrics.jsonl", row(1, 10.0), row(2, 12.0))
        console.poll()
        task = console.progress.tasks[0]
        assert (task.completed, task.total, task.fields["eta"]) == (2, 4, "0:00:04")
        assert task.fields["stats"] == "loss 2.8000 | pass-2 3.1000 | Sim H 1.500 | 2.00 groups/s | data wait 5%"
    assert "step 2/4" in out.getvalue() and "ETA 0:00:04" in out.getvalue()


def test_eta_and_summary():
    clock = StepClock(max_steps=10)
    assert clock.add(row(1, 0.0)) is None
    assert clock.add(row(3, 4.0)) == pytest.approx(14.0)  # 2 s per step, 7 steps left
    assert clock.add(row(2, 9.0)) is None  # a restart retrains step 2: measure from there
    assert duration(3725) == "1:02:05" and duration(None) == "-"
    assert step_line({"step": 1}, 5, None) == "step 1/5 | loss - | pass-2 - | Sim H - | - groups/s | data wait - | ETA -"
    held = {"groups": 4, "pass2_loss": 3.0, "pass3_loss": 2.5, "top1_same_doc": 0.5}
    report = {"steps": 20, "wall_s": 61, "heldout": {"before": held, "after": {**held, "pass3_loss": 2.0}},
              "checkpoint": "/r/checkpoint_x", "plot": "/r/loss_curve.png"}
    assert final_summary(report, Path("/r/report.json")) == [
        "done: 20 steps in 0:01:01",
        "held-out (4 groups): pass-3 loss 2.5000 -> 2.0000, pass-2 loss 3.0000 -> 3.0000, "
        "top-1 same-document hit-rate 0.500 -> 0.500",
        "checkpoint: /r/checkpoint_x", "loss curve: /r/loss_curve.png", "report: /r/report.json"]


def test_ray_switches():
    assert train_logging(False).log_level == "WARNING" and train_logging(True).log_level == "INFO"
    assert state_api_env("http://127.0.0.1:8265") == {"RAY_API_SERVER_ADDRESS": "http://127.0.0.1:8265"}
    assert state_api_env("127.0.0.1:6379") == {"RAY_ADDRESS": "127.0.0.1:6379"}
    assert state_api_env("auto") == {} and state_api_env(None) == {}
