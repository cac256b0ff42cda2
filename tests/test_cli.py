"""The `revela` CLI: one entry point, every subcommand present, bad configs exit 2 with the key named."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_checks import cli, one_error_line
from revela.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_all_subcommands_are_registered():
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    for command in ("assets", "config", "train", "export", "prepare", "evaluate", "build-evals"):
        assert command in out.output


def test_config_prints_resolved_values_with_overrides():
    out = runner.invoke(app, ["config", "-c", str(ROOT / "jobs/configs/smoke-cpu.yaml"), "train.max_steps=11"])
    assert out.exit_code == 0, out.output
    assert "max_steps: 11" in out.output and "name: revela-smoke-cpu" in out.output


def test_train_with_a_typo_in_the_config_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("model:\n  lm:\n    finetun: lora\n")
    out = runner.invoke(app, ["train", "-c", str(bad)])
    assert out.exit_code == 2
    assert "model.lm.finetun: unknown key" in out.output


def test_resume_and_overwrite_exclude_each_other():
    out = runner.invoke(app, ["train", "--resume", "--overwrite"])
    assert out.exit_code == 2 and "exclude each other" in out.output


def test_jobs_entry_point_is_the_same_cli():
    out = subprocess.run([sys.executable, "jobs/train.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "--resume" in out.stdout


@pytest.mark.parametrize("name", ["/tmp/x", "..", "a/b", "../x", "."])
def test_a_run_name_must_be_one_safe_path_component(tmp_path, name):
    res = cli("config", f"name={name}")
    one_error_line(res, "name:", "not a safe name")
    res = cli("train", f"name={name}", f"ray.storage_path={tmp_path}", "--overwrite")
    one_error_line(res, "name:", "not a safe name")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_never_removes_a_folder_outside_the_storage_path(tmp_path):
    from revela.config import RunConfig
    from revela.train.driver import claim_run_dir

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "revela_run.json").write_text("{}")
    storage = tmp_path / "runs"
    storage.mkdir()
    os.symlink(outside, storage / "linked")
    one_error_line(cli("train", "name=linked", f"ray.storage_path={storage}", "--overwrite"), "symbolic link")
    assert (outside / "revela_run.json").is_file()
    unsafe = RunConfig().model_copy(update={"name": ".."})  # model_copy skips validation: the driver checks again
    with pytest.raises(ValueError, match="not a safe name"):
        claim_run_dir(unsafe.model_copy(update={"ray": unsafe.ray.model_copy(update={"storage_path": str(storage)})}),
                      "overwrite")
    assert storage.is_dir()
