"""The shared-storage check and the one-line failures, without a cluster: a node that does not see the driver's marker
(simulated with REVELA_NODE_ROOT), dev sets that are missing or different on a node, shards the data stream cannot
see, and a lost node's failure told in one line. tests/test_cluster.py runs them on two real Ray nodes."""

import json
from pathlib import Path

import pytest

from revela.train.storage import (NODE_ROOT_ENV, StorageNotSharedError, check_marker, confirm_worker, ranks,
                                  storage_failure, write_marker)
from tiny import write_json_dev_set


def test_a_node_that_sees_the_marker_passes_and_records_where_each_rank_ran(tmp_path):
    marker = write_marker(tmp_path / "run")
    check_marker(marker, "Train worker")
    confirm_worker(marker, 0)
    confirm_worker(marker, 1)
    seen = ranks(marker)
    assert sorted(seen) == [0, 1] and all(r["pid"] and r["host"] for r in seen.values())
    check_marker(None, "Train worker")  # no marker (an older caller): nothing to check


def test_a_node_with_its_own_disk_is_refused_in_one_line(tmp_path, monkeypatch):
    marker = write_marker(tmp_path / "run")
    monkeypatch.setenv(NODE_ROOT_ENV, str(tmp_path / "elsewhere"))  # this "node" sees another file system
    with pytest.raises(StorageNotSharedError) as err:
        confirm_worker(marker, 1)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("storage not shared: the Train worker (rank 1) on node ")
    assert str(tmp_path / "run" / ".revela-storage") in message and "docs/cluster.md" in message
    assert not list((tmp_path / "run" / ".revela-storage").glob("*.rank*"))  # refused before writing anything


def test_a_new_run_start_gets_a_new_token_and_old_ones_stay_valid(tmp_path, monkeypatch):
    first, second = write_marker(tmp_path / "run"), write_marker(tmp_path / "run")
    assert first["token"] != second["token"]
    check_marker(first, "sweep trial")  # a restored Tune trial still holds the token of the sweep's first start
    (tmp_path / "copy").mkdir()
    stale = {**second, "dir": str(tmp_path / "copy")}  # a node-local folder of the same name, from another run
    with pytest.raises(StorageNotSharedError, match="sweep trial"):
        check_marker(stale, "sweep trial")


def test_evaluation_tasks_refuse_before_loading_anything(tmp_path, monkeypatch):
    from revela.evaluation.actors import dev_set_hashes, score_checkpoint

    dev = str(write_json_dev_set(tmp_path / "dev"))
    marker = write_marker(tmp_path / "run")
    missing_model = str(tmp_path / "no-checkpoint")  # reaching the model would fail differently
    monkeypatch.setenv(NODE_ROOT_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(StorageNotSharedError, match="the evaluation task on node"):
        score_checkpoint(missing_model, [dev], storage=marker, history_file=str(tmp_path / "run" / "h.jsonl"))
    monkeypatch.delenv(NODE_ROOT_ENV)
    assert not (tmp_path / "run" / "h.jsonl").exists()

    hashes = dev_set_hashes([dev])
    assert hashes[dev].startswith("sha256:")
    with pytest.raises(StorageNotSharedError, match=r"dev set .* is not the driver's \(content "):
        score_checkpoint(missing_model, [dev], storage=marker, dev_hashes={dev: "sha256:" + "0" * 64})
    gone = str(tmp_path / "not-on-this-node")
    with pytest.raises(StorageNotSharedError, match=r"dev set .*not-on-this-node' is not on node .* docs/cluster.md"):
        score_checkpoint(missing_model, [gone], storage=marker, dev_hashes={gone: hashes[dev]})


def test_the_data_stream_names_a_shard_its_node_cannot_see(tmp_path):
    from revela.data.stream import ReadAndTokenize

    udf = ReadAndTokenize({"retriever_name": "unused", "lm_name": "unused"})
    with pytest.raises(StorageNotSharedError, match=r"the data stream on .* does not see the prepared shard .*x\.parq"):
        udf({"path": [str(tmp_path / "x.parquet")], "row_group": [0]})


def test_a_model_folder_missing_on_this_host_is_one_line():
    from revela.assets import resolve_model

    with pytest.raises(FileNotFoundError, match=r"model folder /no/such/model does not exist on host .*docs/cluster"):
        resolve_model("/no/such/model")


# ------------------------------------------------------------------ failures told in one line


def worker_group_error(failures: dict):
    from ray.train import WorkerGroupError

    return WorkerGroupError("\n".join(f"rank {r}: {e}" for r, e in failures.items()), failures)


def lost_rank(rank: int, node_id: str = "624cfad28ad01341b3b5ed8f93eaf5b7", ip: str = "127.0.0.1"):
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    info = (f"Worker info: Worker(\n  metadata=ActorMetadata(\n    hostname='vm',\n    node_id='{node_id}',\n"
            f"    node_ip='{ip}',\n    pid=2258,\n  ),\n)")
    return WorkerHealthCheckFailedError(f"A worker health check failed.\n{info}", RuntimeError("unavailable"))


def run_folder(tmp_path: Path, checkpoint_step: int | None, logged: int) -> Path:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    if checkpoint_step is not None:
        (run_dir / "checkpoint_x").mkdir()
        (run_dir / "checkpoint_x" / "revela_checkpoint.json").write_text(json.dumps({"step": checkpoint_step}))
        (run_dir / "checkpoint_manager_snapshot.json").write_text(json.dumps(
            {"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_x"}}))
    lines = [json.dumps({"step": s}) for s in range(1, logged + 1)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": ' if lines else "")  # the last one cut short
    return run_dir


def test_a_lost_node_is_one_line_saying_what_the_run_keeps_and_loses(tmp_path):
    from revela.train.failures import explain_failure

    error = worker_group_error({0: RuntimeError("gloo: Connection reset by peer"), 1: lost_rank(1)})
    message = explain_failure("r", run_folder(tmp_path, checkpoint_step=2, logged=5), error, max_failures=0)
    assert "\n" not in message
    assert message == ("run 'r' stopped: the worker rank 1 on node 127.0.0.1 (id 624cfad2) stopped answering (its "
                       "node or process died) and no restart is left (ray.max_failures=0); the run continues from "
                       "step 2 (checkpoint_x) when re-run; steps 3-5 trained after it are lost")
    (tmp_path / "again").mkdir()
    bare = explain_failure("r", run_folder(tmp_path / "again", checkpoint_step=None, logged=1), error, 2)
    assert bare.endswith("no complete checkpoint was registered, so steps 1-1 are lost and a re-run starts over")


def test_storage_failures_are_found_inside_worker_errors_and_other_errors_keep_their_traceback(tmp_path):
    from revela.train.failures import explain_failure

    refused = StorageNotSharedError("storage not shared: the Train worker (rank 1) on node x does not see y")
    error = worker_group_error({0: RuntimeError("Connection reset by peer"), 1: refused})
    assert str(storage_failure(error)) == str(refused)
    assert explain_failure("r", tmp_path, error, 2) == str(refused)
    wrapped = RuntimeError(f"Traceback ...\nStorageNotSharedError: {refused}\n")  # a library re-raised only the text
    assert str(storage_failure(wrapped)) == str(refused)
    assert explain_failure("r", tmp_path, worker_group_error({0: ValueError("a bug")}), 2) is None


def test_placement_settings_are_validated():
    from revela.config import RunConfig
    from revela.configbase import ConfigError, load_config

    cfg = load_config(RunConfig, None, ["ray.placement_strategy=STRICT_SPREAD", "ray.resources_per_worker={trainer: 1}",
                                        "ray.label_selector={pool: train}"])
    assert (cfg.ray.placement_strategy, cfg.ray.resources_per_worker, cfg.ray.label_selector) == \
        ("STRICT_SPREAD", {"trainer": 1.0}, {"pool": "train"})
    with pytest.raises(ConfigError, match=r"ray\.resources_per_worker: .*CPU: set CPUs and GPUs with cpus_per_worker"):
        load_config(RunConfig, None, ["ray.resources_per_worker={CPU: 2}"])
    with pytest.raises(ConfigError, match=r"ray\.placement_strategy"):
        load_config(RunConfig, None, ["ray.placement_strategy=EVERYWHERE"])
