"""A sweep trial's record: built from the report `revela.train.run` returns plus the run folder's logs, and
counting every trained step when metrics are logged every few steps."""

import json

import pytest

from revela.config import RunConfig
from revela.train.runfolder import DEV_SCORES_FILE, METRICS_FILE, append_jsonl
from revela.tuning.trial import summarize, tune_metrics, tune_metrics_keys
from tiny import save_tiny_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("models"))


def test_record_takes_the_runs_report_and_counts_unlogged_steps(tmp_path, models):
    cfg = RunConfig.model_validate({
        "name": "t", "model": {"retriever": {"name": str(models / "retriever")}, "lm": {"name": str(models / "lm")}},
        "data": {"group_size": 4}, "train": {"max_steps": 6, "log_every": 2},
        "ray": {"num_workers": 2, "storage_path": str(tmp_path)}, "eval": {"datasets": ["d1"]}})
    run_dir = tmp_path / "t"
    run_dir.mkdir()
    # logged at steps 2, 4, 6 (log_every 2); each row: one step's groups, the interval's mean step time;
    # a restart from the step-4 checkpoint re-trains steps 5-6 (logged twice)
    for step, seconds in ((2, 1.0), (4, 1.0), (6, 3.0), (6, 2.0)):
        append_jsonl(run_dir / METRICS_FILE, {"step": step, "loss": 9.0, "groups": 3, "tokens": 100,
                                              "step_time_s": seconds, "interval_steps": 2})
    append_jsonl(run_dir / DEV_SCORES_FILE, {"checkpoint_step": 6, "checkpoint": "c6", "dev_ndcg_at_10": 0.4,
                                             "d1/ndcg_at_10": 0.4, "dev_eval_seconds": 5.0})
    backbone = tmp_path / "backbone.json"
    backbone.write_text(json.dumps({"model": "r", "metrics": {"dev_ndcg_at_10": 0.2, "d1/ndcg_at_10": 0.2}}))
    # no report.json in the folder: the record must come from the report handed over
    report = {"steps": 6, "final": {"loss": 2.5}, "sim_health": {"status": "ok", "temperature": 0.05}}
    record = summarize(cfg, {"group_size": 4}, run_dir, report, backbone, 10.0, None)

    assert (record["steps"], record["final_loss"], record["sim_health"]) == (6, 2.5, report["sim_health"])
    assert record["groups_seen"] == 3 * 6 * 2  # 3 groups x 6 steps x 2 workers (not 3 x 3 logged rows x 2)
    assert record["chunks_seen"] == record["groups_seen"] * 4
    assert record["train_step_s"] == (1.0 + 1.0 + 3.0 + 2.0) * 2  # every trained step, the re-trained ones too
    assert record["dev_eval_s"] == 5.0 and record["best"]["step"] == 6
    metrics = tune_metrics(record)
    assert list(metrics) == tune_metrics_keys(cfg.model_dump()) and metrics["trial_hash"] == record["trial_hash"]
