"""The run driver (revela.train.driver): a run is validated before anything is deleted or Ray starts, 0 workers is
refused at config time, a run always checkpoints its last step, and one that ends without a checkpoint says so.

Only the last test trains (one Train worker, two steps, tiny models); the others never start Ray.
"""

import json
from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from revela.cli import app
from revela.config import RunConfig
from revela.configbase import ConfigError, load_config
from tiny import tiny_run_overrides, write_json_dev_set, write_tiny_run_assets

runner = CliRunner()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_tiny_run_assets(tmp_path_factory.mktemp("assets"))


def previous_run(storage: Path, name: str) -> tuple[Path, dict]:
    """A run folder as a finished run leaves it; returns it and its files with their sizes."""
    run_dir = storage / name
    (run_dir / "checkpoint_2026").mkdir(parents=True)
    (run_dir / "checkpoint_2026" / "trainable.safetensors").write_bytes(b"w" * 4096)
    (run_dir / "revela_run.json").write_text(json.dumps({"config_hash": "old", "config": {}}))
    (run_dir / "revela_status.json").write_text(json.dumps({"status": "finished", "step": 4}))
    return run_dir, files(run_dir)


def files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("override, message", [
    ("model.retriever.name=all-minilm-l6-v3", "model.retriever.name='all-minilm-l6-v3': unknown model"),
    ("model.lm.name=/no/such/lm", "model.lm.name='/no/such/lm': /no/such/lm: no such model folder"),
    ("data.shards=/no/such/shards", "data.shards='/no/such/shards': no manifest.json there"),
    ("eval.datasets=[/no/such/dev]", "eval.datasets: /no/such/dev: not a dataset directory"),
])
def test_overwrite_validates_everything_before_deleting_the_run(assets, tmp_path, override, message):
    from revela.train.driver import claim_run_dir

    run_dir, before = previous_run(tmp_path, "kept")
    args = [*tiny_run_overrides(assets, tmp_path, "kept", num_workers=1), override]
    out = runner.invoke(app, ["train", *args, "--overwrite"])
    assert out.exit_code == 2, out.output
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], out.output  # one line naming the key, no traceback
    assert files(run_dir) == before  # the old run and its checkpoint are still there
    assert not ray.is_initialized()  # refused before Ray started
    with pytest.raises(ConfigError, match=message.split(":")[0]):
        claim_run_dir(load_config(RunConfig, None, args), "overwrite")
    assert files(run_dir) == before


def test_zero_workers_is_refused_at_config_time(tmp_path):
    with pytest.raises(ConfigError, match=r"ray\.num_workers: must be at least 1: 0 would run Ray Train's local "
                                          r"mode, which keeps no checkpoint"):
        load_config(RunConfig, None, ["ray.num_workers=0"])
    config = tmp_path / "zero.yaml"
    config.write_text("ray: {num_workers: 0}\n")
    out = runner.invoke(app, ["train", "-c", str(config), f"ray.storage_path={tmp_path}"])
    assert out.exit_code == 2 and "ray.num_workers: must be at least 1" in out.output
    assert list(tmp_path.iterdir()) == [config]


def test_a_run_that_ends_without_a_checkpoint_says_so_in_one_line(tmp_path):
    from ray.train import Result

    from revela.train.driver import TrainingStoppedError, final_checkpoint, scored_checkpoints

    cfg = load_config(RunConfig, None, [f"ray.storage_path={tmp_path}", "name=bare"])
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "revela_status.json").write_text(json.dumps({"status": "finished", "step": 3}))
    ended = Result(metrics=None, checkpoint=None, error=None, path=None)  # what Ray's local mode returned
    assert scored_checkpoints(cfg, ended) == []  # TypeError: 'NoneType' object is not iterable before
    with pytest.raises(TrainingStoppedError, match=r"^run 'bare' ended at step 3 without a checkpoint in .*bare: "
                                                   r"nothing to score, export or resume from$"):
        final_checkpoint(cfg, tmp_path / "bare", ended)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_run_checkpoints_its_last_step_when_checkpoint_every_is_longer(assets, tmp_path):
    from revela.train.checkpoint import checkpoint_step, is_complete
    from revela.train.driver import run
    from revela.train.ray_setup import ensure_ray

    dev = write_json_dev_set(tmp_path / "dev")
    cfg = load_config(RunConfig, None, tiny_run_overrides(
        assets, tmp_path, "short", num_workers=1, max_steps=2, checkpoint_every=5, heldout_groups=0)
        + [f"eval.datasets=[{dev}]", "eval.num_cpus=0.25"])
    ensure_ray(None)
    try:
        report = run(cfg)
    finally:
        ray.shutdown()
    kept = [p for p in (tmp_path / "short").glob("checkpoint_*") if p.is_dir()]
    assert len(kept) == 1 and is_complete(kept[0]) and checkpoint_step(kept[0]) == 2
    assert report["checkpoint"] == str(kept[0])
    assert [row["step"] for row in report["checkpoints"]] == [2] and 0 <= report["checkpoints"][0]["dev_ndcg_at_10"] <= 1
