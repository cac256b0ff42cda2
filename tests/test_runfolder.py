"""revela.train.runfolder: the run folder's one JSON writer (never half a file) and its readers."""

import json
import os
from pathlib import Path

import pytest

from revela.train import runfolder
from revela.train.runfolder import (DEV_SCORES_FILE, METRICS_FILE, RunFolderError, append_jsonl, config_hash,
                                    dev_history, metrics_history, read_report, read_run_record,
                                    read_status, write_json, write_run_record, write_status)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_json_replaces_the_whole_file(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"steps": 1})
    write_json(path, {"steps": 2, "loss": float("nan")})
    assert json.loads(path.read_text())["steps"] == 2 and not leftovers(tmp_path)


@pytest.mark.parametrize("failure", ["serialize", "write", "rename"])
def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path, monkeypatch, failure):
    path = tmp_path / "revela_status.json"
    write_json(path, {"status": "finished", "step": 3})
    data = {"step": 4}
    if failure == "serialize":
        data = {"step": object()}  # not JSON: fails before any file is opened
    elif failure == "write":
        real = Path.write_text

        def half_then_fail(self, text, *args, **kwargs):
            real(self, text[: len(text) // 2])  # a disk that fills up mid-write
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(Path, "write_text", half_then_fail)
    else:
        monkeypatch.setattr(runfolder.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("rename failed")))
    with pytest.raises((TypeError, OSError)):
        write_json(path, data)
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"status": "finished", "step": 3}
    assert not leftovers(tmp_path)


def test_nan_is_refused_where_asked(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "r.json", {"x": float("nan")}, allow_nan=False)
    assert not list(tmp_path.iterdir())


def test_readers_on_a_tiny_run_folder(tmp_path):
    assert read_status(tmp_path) == {} and read_run_record(tmp_path) is None and read_report(tmp_path) is None
    assert metrics_history(tmp_path) == [] and dev_history(tmp_path) == []
    write_run_record(tmp_path, "abc", {"name": "r"})
    write_status(tmp_path, "non_finite_loss", 2, message="loss is nan")
    for step, loss in ((1, 3.0), (2, 2.5), (1, 3.1), (2, 2.4), (3, 2.0)):  # a restart re-trains steps 1-2
        append_jsonl(tmp_path / METRICS_FILE, {"step": step, "loss": loss})
    for step, score in ((2, 0.1), (2, 0.2), (4, 0.3)):
        append_jsonl(tmp_path / DEV_SCORES_FILE, {"checkpoint_step": float(step), "dev_ndcg_at_10": score})
    append_jsonl(tmp_path / DEV_SCORES_FILE, {"note": "a row without a step is not a scored checkpoint"})
    assert read_run_record(tmp_path) == {"config_hash": "abc", "config": {"name": "r"}}
    assert read_status(tmp_path) == {"status": "non_finite_loss", "step": 2, "message": "loss is nan"}
    assert [(r["step"], r["loss"]) for r in metrics_history(tmp_path)] == [(1, 3.1), (2, 2.4), (3, 2.0)]
    assert [(r["step"], r["dev_ndcg_at_10"]) for r in dev_history(tmp_path)] == [(2, 0.2), (4, 0.3)]


def test_a_bad_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1, "loss": 3.0}\n\n{"step": 2, "loss": \n')
    with pytest.raises(RunFolderError, match=f"^{path}:3: not a JSON line"):
        metrics_history(tmp_path)
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(RunFolderError, match=f"^{path}:2: expected a JSON object, got list"):
        metrics_history(tmp_path)
    (tmp_path / "report.json").write_text('{"steps": ')
    with pytest.raises(RunFolderError, match="report.json: not valid JSON"):
        read_report(tmp_path)


def test_an_append_after_a_cut_line_starts_a_fresh_line(tmp_path):
    """A node lost mid-append leaves a line cut short; the resumed run's rows must not be glued onto it."""
    from revela.train.failures import trained_steps

    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1}\n{"step": ')
    append_jsonl(path, {"step": 2})
    assert path.read_text().splitlines() == ['{"step": 1}', '{"step": ', '{"step": 2}']
    assert trained_steps(tmp_path) == 2  # the failure summary skips the cut line
    with pytest.raises(RunFolderError, match=":2: "):  # every other reader names it
        metrics_history(tmp_path)


def test_config_hash_ignores_steps_and_where_ray_runs():
    from revela.config import RunConfig

    cfg = RunConfig()
    same = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 99}),
                                  "ray": cfg.ray.model_copy(update={"address": "ray://elsewhere:10001"})})
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 0.5})})
    assert config_hash(cfg) == config_hash(same) != config_hash(other)


def test_importing_revela_train_stays_cheap():
    """tuning imports revela.train at module level: the public names load on first use, not torch or Ray."""
    import subprocess
    import sys

    code = ("import sys, revela.train, revela.train.runfolder; from revela.train import write_json, config_hash; "
            "print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip() == "[]"
