"""bench/gpu_session.sh, the one GPU acceptance check, writes a sweep config for its sweep stage: that config must
stay valid as the sweep's rules change (a device call is 15 minutes a session; a config error found there wastes it).
Both of the script's modes, without running the sweep."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from revela.tuning.config import load_sweep
from tiny import save_tiny_models

ROOT = Path(__file__).resolve().parents[1]


def sweep_config_writer() -> str:
    """The Python the script runs (a quoted heredoc) to write its sweep config."""
    script = (ROOT / "bench" / "gpu_session.sh").read_text()
    blocks = re.findall(r"<<'PY'[^\n]*\n(.*?)\nPY\n", script, flags=re.S)
    [writer] = [b for b in blocks if "paper-batch-size shape" in b]
    return writer


@pytest.mark.parametrize("mode,sizes,chunks,budget", [("gpu", "[8, 16]", 32, 320), ("cpu", "[3, 4]", 8, 32)])
def test_the_sessions_sweep_config_is_valid(tmp_path, mode, sizes, chunks, budget):
    model = save_tiny_models(tmp_path / "models") / "lm"
    env = {**os.environ, "MODEL": str(model), "ROOT": str(ROOT), "WORK": str(tmp_path), "MODE": mode, "L": "16",
           "SIZES": sizes, "CHUNKS": str(chunks), "BUDGET": str(budget)}
    path = tmp_path / "sweep.yaml"
    written = subprocess.run([sys.executable, "-", str(path)], input=sweep_config_writer(), env=env, text=True,
                             capture_output=True)
    assert written.returncode == 0, written.stderr
    sweep, _ = load_sweep(path)
    assert sweep.axes.group_size == [int(b) for b in sizes.strip("[]").split(",")]
    assert sweep.budget.chunks == budget
