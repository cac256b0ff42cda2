"""A checkpoint is complete only when every file its marker lists is there at full size: Ray Train copies a
checkpoint into the storage path file by file, in parallel, so a node lost mid-copy can leave the marker beside
truncated weights. Resume then skips it like a missing one."""

import json

from revela.config import RunConfig, TrainConfig
from revela.retriever import CHECKPOINT_MARKER
from revela.train.checkpoint import is_complete, save_checkpoint
from revela.train.loop import Trainer
from revela.train.resume import SNAPSHOT, repair_snapshot
from tiny import tiny_revela


def test_a_copy_cut_short_is_not_a_complete_checkpoint_and_resume_skips_it(tmp_path):
    import torch

    model = tiny_revela()
    trainer = Trainer(model, TrainConfig(max_steps=4, warmup_steps=0), torch.device("cpu"))
    run_dir = tmp_path / "run"
    older = save_checkpoint(run_dir / "checkpoint_a", model, trainer, RunConfig(name="run"))
    trainer.step = 2
    newer = save_checkpoint(run_dir / "checkpoint_b", model, trainer, RunConfig(name="run"))
    listed = json.loads((newer / CHECKPOINT_MARKER).read_text())["files"]
    assert "trainable.safetensors" in listed and CHECKPOINT_MARKER not in listed
    assert is_complete(older) and is_complete(newer)

    weights = newer / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[: listed["trainable.safetensors"] // 2])  # the copy stopped half-way
    assert not is_complete(newer)
    results = [{"checkpoint_dir_name": n, "metrics": {"step": s}} for n, s in (("checkpoint_a", 0), ("checkpoint_b", 2))]
    (run_dir / SNAPSHOT).write_text(json.dumps({"checkpoint_results": results, "checkpoint_report_indices": [0, 1],
                                                "latest_checkpoint_result": results[1]}))
    assert repair_snapshot(run_dir, "run") == ["checkpoint_b"]
    assert json.loads((run_dir / SNAPSHOT).read_text())["latest_checkpoint_result"]["checkpoint_dir_name"] == \
        "checkpoint_a"

    marker = json.loads((older / CHECKPOINT_MARKER).read_text())
    del marker["files"]  # a checkpoint from before markers listed their files: the marker alone counts
    (older / CHECKPOINT_MARKER).write_text(json.dumps(marker))
    assert is_complete(older)
    (older / CHECKPOINT_MARKER).write_text('{"step": ')  # the marker itself cut short
    assert not is_complete(older)
