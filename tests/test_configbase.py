"""Config files: a key given twice in one mapping is refused with file:line, for run and sweep configs alike
(plain YAML loaders silently keep the last value, so `train:` twice would drop a whole section)."""

import pytest
from typer.testing import CliRunner

from revela.cli import app
from revela.config import RunConfig
from revela.configbase import ConfigError, apply_overrides, load_config, load_yaml
from revela.tuning.config import load_sweep


def test_a_section_given_twice_in_a_run_config_is_refused_with_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: twice\ntrain:\n  lr: 1.0e-3\nray: {num_workers: 1}\ntrain:\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match=rf"^{path}:5: duplicate key 'train' \(first at line 2\)$"):
        load_config(RunConfig, path)
    out = CliRunner().invoke(app, ["train", "-c", str(path)])
    assert out.exit_code == 2
    assert [line for line in out.output.splitlines() if line.strip()] == \
        [f"error: {path}:5: duplicate key 'train' (first at line 2)"]


def test_duplicate_keys_in_flow_mappings_sweeps_and_overrides_are_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train: {lr: 1.0e-3, lr: 2.0e-3}\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:1: duplicate key 'lr'"):
        load_yaml(path)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\ndatasets: [stdlib-code]\nbudget: {steps: 2}\naxes:\n  group_size: [4]\n"
                     "budget: {chunks: 64}\n")
    with pytest.raises(ConfigError, match=r"sweep\.yaml:6: duplicate key 'budget' \(first at line 3\)"):
        load_sweep(sweep)
    with pytest.raises(ConfigError, match=r"override 'train=\{a: 1, a: 2\}'.*duplicate key 'a'"):
        apply_overrides({}, ["train={a: 1, a: 2}"])


def test_merge_keys_may_be_overridden_and_single_keys_still_load(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("lora: &lora {r: 8, alpha: 16}\nmodel:\n  lm:\n    lora:\n      <<: *lora\n      r: 4\n")
    assert load_yaml(path)["model"]["lm"]["lora"] == {"r": 4, "alpha": 16}
