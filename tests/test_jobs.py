"""The `ray job submit` entry points (jobs/*.py) are the CLI's commands under their own script name: their help
shows no subcommand that the script does not have."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, option", [("sweep.py", "--overwrite"), ("train.py", "--verbose")])
def test_entry_point_help_has_no_phantom_subcommand(script, option):
    out = subprocess.run([sys.executable, f"jobs/{script}", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    usage = next(line for line in out.stdout.splitlines() if "Usage:" in line)
    assert usage.split() == ["Usage:", script, "[OPTIONS]", "[overrides]..."]
    assert option in out.stdout


def test_entry_point_runs_the_command():
    out = subprocess.run([sys.executable, "jobs/sweep.py", "--config", "no/such/sweep.yaml"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip() == "error: config file not found: no/such/sweep.yaml"
