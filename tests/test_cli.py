"""The `revela` CLI: one entry point, every subcommand present, bad configs exit 2 with the key named."""

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

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
