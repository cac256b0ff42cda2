"""Ray without its dashboard packages (`pip install "ray[train,tune]"`): `revela train` starts the embedded Ray
without the dashboard, says so in one line, and its console stays clean (revela.train.ray_setup)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from console_checks import false_alarms
from revela.train.ray_setup import NO_STATE_API_ENV, STATE_API_FLAG, TorchTrainer, local_ray_options, \
    no_dashboard_notice
from tiny import tiny_run_overrides, write_tiny_run_assets

ROOT = Path(__file__).resolve().parents[1]
# Two of the packages `ray[default]` adds and `ray[train,tune]` lacks, made unimportable the way an absent package
# is (ModuleNotFoundError), in every process of the run: the driver, Ray's dashboard and agents, the workers.
ABSENT = ("aiohttp_cors", "opencensus")


def test_without_dashboard_packages_the_embedded_ray_has_no_dashboard_and_no_state_api_clients(monkeypatch):
    options, env = local_ray_options(missing="No module named 'aiohttp_cors'")
    assert options == {"include_dashboard": False}
    assert env["RAY_TRAIN_ENABLE_STATE_TRACKING"] == "0" and "RAY_API_SERVER_ADDRESS" not in env
    with_dashboard, env = local_ray_options()
    assert with_dashboard["include_dashboard"] and env["RAY_API_SERVER_ADDRESS"].startswith("http://127.0.0.1:")
    notice = no_dashboard_notice("No module named 'aiohttp_cors'")
    assert "\n" not in notice and all(s in notice for s in ("aiohttp_cors", "Train page", "State API",
                                                            'pip install "ray[default]"'))


def test_trainer_leaves_out_the_placement_group_cleaner_only_without_a_state_api(monkeypatch):
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    trainer = TorchTrainer(lambda: None)
    monkeypatch.delenv(STATE_API_FLAG, raising=False)
    assert any(isinstance(c, PlacementGroupCleanerCallback) for c in trainer._create_default_callbacks())
    monkeypatch.setenv(STATE_API_FLAG, NO_STATE_API_ENV[STATE_API_FLAG])
    assert not any(isinstance(c, PlacementGroupCleanerCallback) for c in trainer._create_default_callbacks())


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_train_runs_to_the_end_without_dashboard_packages_with_one_notice_and_a_clean_console(tmp_path):
    shadow = tmp_path / "absent"
    for name in ABSENT:
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{name}'\", "
                                                   f"name='{name}')\n")
    assets = write_tiny_run_assets(tmp_path / "assets")
    overrides = tiny_run_overrides(assets, tmp_path / "runs", "no-dashboard", num_workers=1, max_steps=2,
                                   checkpoint_every=2, heldout_groups=0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}  # as scripts/env.sh sets it: without a State API it is overridden
    out = subprocess.run([sys.executable, "jobs/train.py", *overrides], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=380)
    console = out.stdout + out.stderr
    assert out.returncode == 0, console[-5000:]
    notices = [line for line in console.splitlines() if "dashboard packages are missing" in line]
    assert notices == [no_dashboard_notice("No module named 'aiohttp_cors'")], console[-5000:]
    rest = "\n".join(line for line in console.splitlines() if line not in notices)
    assert not false_alarms(rest), rest[-5000:]
    assert [line.split(" |")[0] for line in rest.splitlines() if line.startswith("step ")] == ["step 1/2", "step 2/2"]
    assert (tmp_path / "runs" / "no-dashboard" / "report.json").is_file()
