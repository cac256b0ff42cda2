"""The process environment is declared once (revela.environment): scripts/env.sh and jobs/runtime_env.yaml set
exactly the variables it declares, with the same values, so the three cannot drift apart."""

import os
import subprocess
from pathlib import Path

import yaml

from revela.environment import DRIVER_ENV, JOB_ENV, QUIET_ENV, SHELL_ENV, WORKER_KEYS, apply_driver_env, worker_env

ROOT = Path(__file__).resolve().parents[1]


def shell_env(script: str = "") -> dict[str, str]:
    """What a clean bash has after running `script` (bash itself sets PWD, SHLVL, _)."""
    out = subprocess.run(["env", "-i", "bash", "-c", f"{script} env -0"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if item)


def test_env_sh_exports_exactly_the_shell_env():
    clean = shell_env()
    sourced = shell_env("source scripts/env.sh &&")
    added = {k: v for k, v in sourced.items() if clean.get(k) != v and k != "_"}
    assert added.pop("REVELA_CACHE") == str(ROOT / ".cache")  # the one variable that names a path
    assert added == SHELL_ENV


def test_runtime_env_yaml_passes_exactly_the_job_env():
    env_vars = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())["env_vars"]
    assert env_vars == JOB_ENV
    assert all(isinstance(v, str) for v in env_vars.values())  # Ray refuses non-string values


def test_a_job_and_the_embedded_ray_run_with_the_same_quiet_and_offline_switches():
    assert set(QUIET_ENV) <= set(WORKER_KEYS) and set(QUIET_ENV) <= set(JOB_ENV) and set(QUIET_ENV) <= set(DRIVER_ENV)
    assert {k: v for k, v in SHELL_ENV.items() if k in JOB_ENV} == {k: v for k, v in JOB_ENV.items() if k in SHELL_ENV}


def test_the_driver_keeps_values_already_set_and_passes_them_to_workers(monkeypatch, tmp_path):
    for key in DRIVER_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    monkeypatch.setenv("REVELA_CACHE", str(tmp_path))
    apply_driver_env()
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"
    assert all(os.environ[k] == v for k, v in DRIVER_ENV.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS")
    env = worker_env()
    assert env["REVELA_CACHE"] == str(tmp_path) and env["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"
    assert env["PYTHONWARNINGS"] == QUIET_ENV["PYTHONWARNINGS"] and "RAY_AUTH_MODE" not in env
