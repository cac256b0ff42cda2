"""pyproject.toml's ranges hold the exact versions that scripts/setup.sh installs (requirements-common.txt) and that
this environment runs: the Ray and transformers internals named in pyproject.toml were checked against those."""

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DECLARED = {r.name: r for r in map(Requirement, tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                                   ["dependencies"])}
PINNED = dict(re.findall(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", (ROOT / "requirements-common.txt").read_text(),
                         re.MULTILINE))


@pytest.mark.parametrize("name", ["ray", "transformers"])
def test_the_pinned_and_installed_versions_are_in_the_declared_range(name):
    assert DECLARED[name].specifier.contains(PINNED[name]), (DECLARED[name], PINNED[name])
    assert DECLARED[name].specifier.contains(version(name)), (DECLARED[name], version(name))


def test_ray_is_held_to_one_minor_series():
    # ray_setup.py, failures.py and resume.py use Ray internals that move between minor releases
    bounds = {s.operator: [int(n) for n in s.version.split(".")[:2]] for s in DECLARED["ray"].specifier}
    assert set(bounds) == {">=", "<"}, DECLARED["ray"]
    major, minor = bounds[">="]
    assert bounds["<"] == [major, minor + 1], DECLARED["ray"]
