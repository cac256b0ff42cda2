"""revela.train.resume: a run whose newest checkpoints were lost resumes from the newest complete one, with Ray's
own snapshot reader; with none left, one line and nothing changed."""

import json
import shutil
from pathlib import Path

import pytest

from cli_checks import cli, files, one_error_line


def write_snapshot(run_dir: Path, steps: list[int]) -> None:
    """A run folder as Ray Train V2 leaves it: complete checkpoints and its snapshot (Ray's own schema)."""
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (_CheckpointManagerState,
                                                                                 _TrainingResultState)

    results = []
    for step in steps:
        folder = run_dir / f"checkpoint_{step:06d}"
        folder.mkdir(parents=True)
        (folder / "revela_checkpoint.json").write_text(json.dumps({"step": step}))
        results.append(_TrainingResultState(checkpoint_dir_name=folder.name, metrics={"step": step}))
    state = _CheckpointManagerState(
        checkpoint_results=results, checkpoint_report_indices=[2 * s for s in steps],
        latest_checkpoint_result=results[-1], pending_training_results=[], pending_validation_specs=[],
        current_report_index=2 * steps[-1], validated_checkpoint_dir_names=[],
        timed_out_validation_checkpoint_dir_names=[], failed_validation_checkpoint_dir_names=[])
    (run_dir / "checkpoint_manager_snapshot.json").write_text(state.model_dump_json())


def test_a_lost_newest_checkpoint_resumes_from_the_newest_complete_one(tmp_path):
    from ray.train import CheckpointConfig
    from ray.train.v2._internal.exceptions import CheckpointManagerInitializationError
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import CheckpointManager
    from ray.train.v2._internal.execution.storage import StorageContext

    from revela.train.resume import repair_snapshot

    run_dir = tmp_path / "r1"
    write_snapshot(run_dir, [2, 4, 6])
    shutil.rmtree(run_dir / "checkpoint_000006")  # lost with a disk
    (run_dir / "checkpoint_000004" / "revela_checkpoint.json").unlink()  # and one half-written
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="r1")
    with pytest.raises(CheckpointManagerInitializationError):  # what Ray does by itself
        CheckpointManager(CheckpointConfig(num_to_keep=3), storage)
    assert repair_snapshot(run_dir, "r1") == ["checkpoint_000004", "checkpoint_000006"]
    manager = CheckpointManager(CheckpointConfig(num_to_keep=3), storage)  # Ray's own reader accepts it
    assert manager.latest_checkpoint_result.checkpoint.path.endswith("checkpoint_000002")
    assert (run_dir / "checkpoint_000002").is_dir()  # the intact checkpoint is kept


def test_no_complete_checkpoint_left_is_one_line_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "r2"
    write_snapshot(run_dir, [2])
    shutil.rmtree(run_dir / "checkpoint_000002")
    (run_dir / "revela_run.json").write_text(json.dumps({"config_hash": "x", "config": {}}))
    (run_dir / "revela_status.json").write_text(json.dumps({"status": "finished", "step": 2}))
    before = files(run_dir)
    res = cli("train", "name=r2", f"ray.storage_path={tmp_path}", "--resume")
    line = one_error_line(res, "checkpoint_000002", "missing")
    assert "--overwrite" in line
    assert files(run_dir) == before
