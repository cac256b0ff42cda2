"""Score training checkpoints on a dev suite while training goes on.

Through Ray Train V2's asynchronous validation hook (the scorer runs as its own Ray task, so training does not
wait for it)::

    from revela.evaluation.actors import validation_config
    trainer = TorchTrainer(..., validation_config=validation_config(["stdlib-code"], max_queries=200),
                           run_config=RunConfig(checkpoint_config=CheckpointConfig(
                               checkpoint_score_attribute="dev_ndcg_at_10", checkpoint_score_order="max")))
    # in the train loop, with a checkpoint:  ray.train.report(metrics, checkpoint=ckpt, validation=True)

Ray runs `validate_checkpoint(checkpoint, **fn_kwargs)` as a task per checkpoint and merges the returned
metrics into that checkpoint's metrics, where they drive best-checkpoint selection.

`score_checkpoint` is the plain function under it; it loads the dev sets once per process and is cheap for
small sets (`max_queries` samples the queries, the corpus stays whole).

Returned metrics are flat floats: `dev_ndcg_at_10`, `dev_recall_at_100`, `dev_mrr_at_10`, `dev_map_at_100`
(means over the datasets), `<dataset>/ndcg_at_10` etc. per dataset, `dev_eval_seconds`, and `checkpoint_step`
when the checkpoint records one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from revela.evaluation.beir import BeirDataset, DatasetError, content_hash, load_beir
from revela.train.runfolder import EVAL_FILE, append_jsonl, write_json

log = logging.getLogger(__name__)

_DATASETS: dict[tuple, BeirDataset] = {}


def dev_set_hashes(datasets: list[str], split: str = "test", eval_dir: str | None = None) -> dict[str, str]:
    """Each dev set's content hash as this process sees it (suite sets built on first use): the driver hands them to
    evaluation tasks, which refuse a dev set that is missing or different on their node."""
    from revela.evaluation.suite import resolve_dataset

    return {d: content_hash(resolve_dataset(d, eval_dir), split) for d in datasets}


def _dev_sets(datasets: list[str], split: str, max_queries: int | None, eval_dir: str | None,
              expected: dict[str, str] | None = None) -> list[BeirDataset]:
    from revela.evaluation.suite import resolve_dataset
    from revela.train.storage import PREFIX, StorageNotSharedError, node_description

    out = []
    for d in datasets:
        try:
            path = Path(resolve_dataset(d, eval_dir)).resolve()
        except DatasetError as e:
            if expected is None:
                raise
            raise StorageNotSharedError(f"{PREFIX} dev set {d!r} is not on {node_description()} ({e}); put dev sets "
                                        "on a file system every node mounts, see docs/cluster.md") from None
        files = [path / "corpus.jsonl", path / "queries.jsonl", path / "qrels" / f"{split}.tsv"]
        key = (str(path), split, max_queries, tuple(f.stat().st_mtime_ns if f.exists() else 0 for f in files))
        if key not in _DATASETS:
            full = load_beir(path, split=split)
            want = (expected or {}).get(d)
            if want and full.content_hash != want:
                raise StorageNotSharedError(
                    f"{PREFIX} dev set {d!r} at {path} on {node_description()} is not the driver's (content "
                    f"{full.content_hash[7:19]} here, {want[7:19]} there); put dev sets on a file system every node "
                    "mounts, see docs/cluster.md")
            _DATASETS[key] = full.subset(max_queries)
        out.append(_DATASETS[key])
    return out


def score_model(model: str, datasets: list[str], *, split: str = "test", max_queries: int | None = None,
                batch_size: int = 32, max_length: int | None = None, passage_max_length: int | None = None,
                k: int = 100, prefix: str = "dev", eval_dir: str | None = None,
                protocol: dict | None = None, dev_hashes: dict[str, str] | None = None) -> dict:
    """{"metrics": flat metrics, "per_query": {dataset: {query id: nDCG@10}}, "protocol": as encoded, "report"}.

    `model` is a training checkpoint (revela_checkpoint.json + retriever/), an exported folder, a plain model folder
    or an asset name; it is encoded with the protocol it carries (or `protocol`, EncodingProtocol fields), queries
    at `max_length` (None: as trained) and passages at `passage_max_length` (None: the length the model declares or
    its checkpoint recorded), as `revela evaluate` does. dev_hashes (`dev_set_hashes` on the driver): refuse with one
    line a dev set that is missing or different on this node. Raises `ModelLoadError` for a folder that is not a
    usable model.
    """
    from revela.evaluation.run import PER_QUERY, evaluate
    from revela.evaluation.settings import EvalSettings

    if not datasets:
        raise ValueError("scoring needs at least one dev dataset")
    start = time.perf_counter()
    # max_queries samples the cached sets here; evaluate gets them sampled already
    settings = EvalSettings.of(model=str(model), datasets=list(datasets), protocol=protocol, split=split,
                               batch_size=batch_size, max_length=max_length, passage_max_length=passage_max_length,
                               k=k, encoder="local")
    sets = _dev_sets(settings.datasets, split, max_queries, eval_dir, dev_hashes)
    report = evaluate(settings, preloaded=sets, progress=False, show_table=False)
    flat: dict[str, float] = {}
    for metric in ("ndcg_at_10", "recall_at_100", "mrr_at_10", "map_at_100"):
        flat[f"{prefix}_{metric}"] = float(report["average"][metric])
    for name, entry in report["datasets"].items():
        for metric in ("ndcg_at_10", "recall_at_100", "mrr_at_10", "map_at_100"):
            flat[f"{name}/{metric}"] = float(entry[metric])
    flat[f"{prefix}_eval_seconds"] = round(time.perf_counter() - start, 3)
    step = report["model"]["checkpoint_step"]
    if step is not None:
        flat["checkpoint_step"] = float(step)
    return {"metrics": flat, "per_query": {name: e[PER_QUERY] for name, e in report["datasets"].items()},
            "protocol": report["model"]["protocol"], "report": report}


def score_checkpoint(checkpoint_dir: str, datasets: list[str], *, record: bool = False,
                     history_file: str | None = None, storage: dict | None = None,
                     **score_kwargs) -> dict[str, float]:
    """Flat metrics of the retriever in `checkpoint_dir` on `datasets` (directories or suite names); score_kwargs
    as `score_model` (split, max_queries, batch_size, max_length, passage_max_length, k, prefix, eval_dir,
    protocol).

    record=True also writes the full report, the flat metrics and the per-query nDCG@10 to
    `<checkpoint_dir>/revela_eval.json`, attaching the scores to the checkpoint itself; `history_file` gets one
    line per call with the flat metrics and "per_query" ({dataset: {query id: nDCG@10}}, for paired tests). The
    returned metrics stay flat floats (Ray Train merges them into the checkpoint's metrics). storage (a run's
    marker, `revela.train.storage`): refuse with one line on a node that does not share the run folder.
    """
    from revela.train.storage import check_marker

    check_marker(storage, "evaluation task")
    scored = score_model(str(checkpoint_dir), datasets, **score_kwargs)
    flat, per_query = scored["metrics"], scored["per_query"]
    if record:
        write_json(Path(checkpoint_dir, EVAL_FILE),
                   {"metrics": flat, "per_query": per_query, "report": scored["report"]}, allow_nan=False)
    if history_file:
        append_jsonl(history_file, {"checkpoint": str(checkpoint_dir), "scored_at": time.time(), **flat,
                                    "per_query": per_query})
    prefix = score_kwargs.get("prefix", "dev")
    log.info("scored %s: %s=%.4f", checkpoint_dir, f"{prefix}_ndcg_at_10", flat[f"{prefix}_ndcg_at_10"])
    return flat


def validate_checkpoint(checkpoint, **kwargs) -> dict[str, float]:
    """A `ray.train.ValidationFn`: `score_checkpoint` on a `ray.train.Checkpoint` (kwargs as score_checkpoint)."""
    with checkpoint.as_directory() as directory:
        return score_checkpoint(directory, **kwargs)


def validation_config(datasets: list[str], *, num_cpus: float = 0.5, num_gpus: float = 0, **score_kwargs):
    """A `ray.train.ValidationConfig` that scores every checkpoint reported with `validation=True`.

    score_kwargs (JSON values: max_queries, batch_size, max_length, passage_max_length, split, prefix, eval_dir,
    record) go to `score_checkpoint`. On a small CPU box keep num_cpus fractional, or the task queues behind the
    workers.
    """
    from ray.train import ValidationConfig, ValidationTaskConfig

    return ValidationConfig(fn=validate_checkpoint,
                            task_config=ValidationTaskConfig(fn_kwargs={"datasets": list(datasets), **score_kwargs}),
                            # its own resources, never the caller's placement group: inside a Ray Tune trial the
                            # Train controller would otherwise put it into the trial's tiny bundle, where it cannot fit
                            ray_remote_kwargs={"num_cpus": num_cpus, "num_gpus": num_gpus,
                                               "scheduling_strategy": "DEFAULT"})
