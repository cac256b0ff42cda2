"""Issue 19: a paper-sweep trial's resource request, by trial_resources before (commit a562e56) and now.

    .venv/bin/python bench/compare_trial_resources.py
"""

import ast
import inspect
import subprocess
import tempfile
from pathlib import Path

from revela.tuning.config import base_run_dict, load_sweep
from revela.tuning.grid import apply_budget, expand
from revela.tuning.sweep import TRIAL_DRIVER_CPU, trial_parts, trial_resources

ROOT = Path(__file__).resolve().parents[1]
src = subprocess.run(["git", "show", "a562e56:tuning/sweep.py"], cwd=ROOT, capture_output=True, text=True,
                     check=True).stdout
fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "trial_resources")
old = {"inspect": inspect, "TRIAL_DRIVER_CPU": TRIAL_DRIVER_CPU}
exec(ast.get_source_segment(src, fn), old)

sweep, base_dir = load_sweep(ROOT / "jobs" / "sweeps" / "paper-batch-size.yaml")
with tempfile.TemporaryDirectory() as tmp:
    trials = apply_budget(expand(sweep, base_run_dict(sweep, base_dir), Path(tmp)), sweep, {})
print("old:", old["trial_resources"](trials[0].run))
print("new:", trial_resources(trials[0].run))
print("parts:", trial_parts(trials[0].run))
