"""`platform/` is a folder, never a package: `import platform` must stay the standard library everywhere."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STDLIB = sysconfig.get_paths()["stdlib"]


def test_no_top_level_platform_package():
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_import_platform_from_repo_root_is_stdlib():
    code = "import platform, uuid, torch; print(platform.system()); print(platform.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    system, path = out.stdout.split()
    assert system == "Linux"
    assert Path(path).parent == Path(STDLIB)


def test_revela_namespace_maps_the_design_folders():
    import revela.data
    import revela.evaluation
    import revela.tuning

    assert Path(revela.__file__).parent == ROOT / "platform" / "revela"
    assert Path(revela.evaluation.__file__).parent == ROOT / "evaluation"
    assert Path(revela.tuning.__file__).parent == ROOT / "tuning"


@pytest.mark.timeout(180)
def test_import_platform_inside_a_ray_worker_with_repo_root_as_working_dir():
    code = f"""
import json, ray
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
         runtime_env={{"working_dir": {str(ROOT)!r}, "excludes": [".venv", ".git", ".cache", "runs", "data"]}})
@ray.remote
def probe():
    import os, platform, uuid
    return platform.system(), platform.__file__, os.getcwd()
print(json.dumps(ray.get(probe.remote())))
ray.shutdown()
"""
    env = {**os.environ, "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=170)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    system, path, cwd = json.loads(out.stdout.strip().splitlines()[-1])
    assert system == "Linux"
    assert Path(path).parent == Path(STDLIB)
    assert (Path(cwd) / "platform" / "revela").is_dir()  # the worker really ran inside the uploaded repo root
