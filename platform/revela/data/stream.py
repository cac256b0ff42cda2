"""Prepared shards -> a Ray Data stream whose rows are one tokenized group each.

    ds = build_stream(shard_dir, {"retriever_name": ..., "lm_name": ..., "protocol": EncodingProtocol(...),
                                  "lm_max_length": 160})
    TorchTrainer(..., datasets={"train": ds})
    # in the worker:
    for batch in ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=1):
        batch["passage_input_ids"]  # [1, B, L] int64

Row columns (all int64): `query_input_ids`, `query_attention_mask`, `passage_input_ids`,
`passage_attention_mask` ([B, retriever max_length]), `lm_input_ids`, `lm_attention_mask`
([B, lm_max_length]), `is_code` (scalar: 1 for code groups, which train without first-half and V-norm)
and `group_index` (scalar: the group's row in the shards, for tracing). String columns are left out
because `iter_torch_batches` only converts numeric columns.

Equal steps per rank. Ray Train splits the "train" dataset with `streaming_split(n, equal=True)`, so every
worker receives exactly `steps_per_epoch(num_groups, n)` groups per epoch, and the
`dropped_groups_per_epoch(num_groups, n)` trailing groups that cannot be split evenly are not seen that
epoch. Do not `break` out of the loop on one rank only: the other ranks' iterators would block.

Resources (the 2-CPU deadlock, ray-notes part 1 §3 pitfall 1). Ray Data only gets the CPUs that Train
workers leave free; if too few are left, its stages never start and training hangs with no error.
`ray.data.read_parquet` makes this worse: its file-listing stage always asks for a whole CPU, on top of the
read tasks. So the stream does not use it: the driver lists the shards' Parquet row groups from the
manifest and footers (`ray.data.from_items`, which runs no task), and one operator, an actor pool of
`concurrency` actors with `num_cpus` CPUs each, reads a row group and tokenizes it. The stream therefore
needs exactly `concurrency * num_cpus` free CPUs (`STREAM_ACTOR_CPUS` each unless told). `ensure_data_headroom` checks a plan against
the cluster and raises instead of hanging. Measured on the 2-core box: `ray.init(num_cpus=2)` with two
Train workers at `resources_per_worker={"CPU": 0.5}` runs; with `read_parquet` the same plan hung.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import numpy as np

from revela.data.shards import read_manifest, shard_paths

STREAM_ACTOR_CPUS = 0.5
"""CPUs each tokenize actor of the stream holds (a training run starts `data.stream_actors` of them)."""

TENSOR_COLUMNS = (
    "query_input_ids",
    "query_attention_mask",
    "passage_input_ids",
    "passage_attention_mask",
    "lm_input_ids",
    "lm_attention_mask",
)
SHARD_COLUMNS = ["texts", "kind", "group_index"]


def default_tokenizer_factory(first_half: bool, **kwargs: Any):
    from revela.batch import GroupTokenizer

    return GroupTokenizer.from_names(first_half=first_half, **kwargs)


class TokenizeGroups:
    """Shard rows (`texts`, `kind`, `group_index`) -> stacked [n, B, L] arrays plus `is_code`, `group_index`.

    `first_half=None` follows the method (first-half query view for prose, full chunk for code); True or
    False forces it for every group. `factory(first_half=..., **tokenizer_kwargs)` builds the per-group
    tokenizer (default: `revela.batch.GroupTokenizer.from_names`), once per instance and view.
    """

    def __init__(self, tokenizer_kwargs: dict[str, Any], first_half: bool | None = None,
                 factory: Callable[..., Callable[[list[str]], dict[str, np.ndarray]]] | None = None):
        self._kwargs = dict(tokenizer_kwargs)
        self._first_half = first_half
        self._factory = factory or default_tokenizer_factory
        self._tokenizers: dict[bool, Callable[[list[str]], dict[str, np.ndarray]]] = {}

    def tokenizer_for(self, kind: str):
        first_half = (kind != "code") if self._first_half is None else self._first_half
        if first_half not in self._tokenizers:
            self._tokenizers[first_half] = self._factory(first_half=first_half, **self._kwargs)
        return self._tokenizers[first_half]

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        columns: dict[str, list[np.ndarray]] = {c: [] for c in TENSOR_COLUMNS}
        sizes = set()
        for texts, kind in zip(batch["texts"], batch["kind"]):
            texts = [str(t) for t in texts]
            sizes.add(len(texts))
            arrays = self.tokenizer_for(str(kind))(texts)
            for c in TENSOR_COLUMNS:
                columns[c].append(np.asarray(arrays[c], dtype=np.int64))
        if len(sizes) > 1:
            raise ValueError(f"groups of different sizes {sorted(sizes)} in one stream; re-run prepare")
        out = {c: np.stack(v) for c, v in columns.items()}
        out["is_code"] = np.asarray([str(k) == "code" for k in batch["kind"]], dtype=np.int64)
        out["group_index"] = np.asarray(batch["group_index"], dtype=np.int64)
        return out


class ReadAndTokenize(TokenizeGroups):
    """`map_batches` UDF over read units (`path`, `row_group`): reads each row group, drops the groups in
    `exclude` (e.g. held-out groups), then tokenizes the rest."""

    def __init__(self, tokenizer_kwargs: dict[str, Any], first_half: bool | None = None,
                 factory: Callable[..., Any] | None = None, exclude: Collection[int] = ()):
        super().__init__(tokenizer_kwargs, first_half, factory)
        self._exclude = frozenset(int(i) for i in exclude)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        _check_visible(batch["path"])
        table = pa.concat_tables([pq.ParquetFile(str(path)).read_row_group(int(rg), columns=SHARD_COLUMNS)
                                  for path, rg in zip(batch["path"], batch["row_group"])])
        if self._exclude:
            keep = pc.invert(pc.is_in(table["group_index"], value_set=pa.array(sorted(self._exclude), pa.int64())))
            table = table.filter(keep)
        return super().__call__(table.to_pydict())


def _check_visible(paths) -> None:
    """On a cluster the shards must be on storage every node mounts: one line naming this node otherwise."""
    from revela.train.storage import PREFIX, StorageNotSharedError, node_description, visible

    missing = sorted({str(p) for p in paths if not visible(str(p))})
    if missing:
        raise StorageNotSharedError(
            f"{PREFIX} the data stream on {node_description()} does not see the prepared shard {missing[0]}; put "
            "data.shards (or ray.storage_path, where runs prepare them) on a file system every node mounts, see "
            "docs/cluster.md")


def read_units(shard_dir: str, exclude: Collection[int] = ()) -> list[dict[str, Any]]:
    """One item per Parquet row group of the prepared shards, in shard order; row groups whose groups are
    all in `exclude` are left out (so no call ever tokenizes an empty batch)."""
    import pyarrow.parquet as pq

    excluded = frozenset(int(i) for i in exclude)
    units = []
    for path in shard_paths(shard_dir):
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            if excluded and excluded.issuperset(pf.read_row_group(rg, columns=["group_index"])["group_index"].to_pylist()):
                continue
            units.append({"path": path, "row_group": rg})
    return units


def build_stream(
    shard_dir: str,
    tokenizer_kwargs: dict[str, Any],
    *,
    first_half: bool | None = None,
    factory: Callable[..., Any] | None = None,
    exclude: Collection[int] = (),
    concurrency: int = 1,
    num_cpus: float = STREAM_ACTOR_CPUS,
):
    """A `ray.data.Dataset` of tokenized groups from a prepared directory (module docstring).

    `tokenizer_kwargs` go to `GroupTokenizer.from_names` (retriever_name, lm_name, protocol, lm_max_length,
    first_half_ratio) or to `factory`. Each call of the actor pool (`concurrency` actors, `num_cpus` CPUs
    each) reads and tokenizes one row group of the shards (`revela.data.shards.ROW_GROUP_ROWS` groups).
    `exclude`: group indices left out of the stream (held-out groups). Filter here rather than with
    `Dataset.filter`, which adds a task stage needing a whole CPU (the deadlock again).
    """
    import ray.data

    units = read_units(shard_dir, exclude)
    if not units:
        raise ValueError(f"{shard_dir}: no groups left to stream after excluding {len(exclude)}")
    return ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
        ReadAndTokenize,
        fn_constructor_kwargs={"tokenizer_kwargs": tokenizer_kwargs, "first_half": first_half, "factory": factory,
                               "exclude": sorted(int(i) for i in exclude)},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
    )


def num_groups(shard_dir: str) -> int:
    manifest = read_manifest(shard_dir)
    if manifest is None:
        raise FileNotFoundError(f"{shard_dir}: no manifest.json; run `revela prepare` first")
    return int(manifest["counts"]["groups"])


def steps_per_epoch(num_groups: int, num_workers: int) -> int:
    """Batches (= groups, at batch_size=1) every worker gets per epoch under Train's equal split."""
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    return num_groups // num_workers


def dropped_groups_per_epoch(num_groups: int, num_workers: int) -> int:
    """Trailing groups the equal split leaves out each epoch (fewer than num_workers)."""
    return num_groups - steps_per_epoch(num_groups, num_workers) * num_workers


def ensure_data_headroom(num_workers: int, cpus_per_worker: float = 1.0, *, concurrency: int = 1,
                         num_cpus: float = STREAM_ACTOR_CPUS, total_cpus: float | None = None) -> float:
    """Raise if Train workers would leave the stream too few CPUs to run (it would hang, not fail).

    Returns the CPUs left over. `total_cpus` defaults to the connected cluster's CPU count.
    """
    if total_cpus is None:
        import ray

        total_cpus = float(ray.cluster_resources().get("CPU", 0.0))
    need = concurrency * num_cpus
    free = total_cpus - num_workers * cpus_per_worker
    if free + 1e-9 < need:
        raise RuntimeError(
            f"{num_workers} Train workers x {cpus_per_worker:g} CPU leave {free:g} of {total_cpus:g} CPUs, but the "
            f"data stream needs {need:g} ({concurrency} tokenize actors x {num_cpus:g}); it would hang. Start Ray "
            "with more logical CPUs (ray.init(num_cpus=...)), give workers fewer "
            "(ScalingConfig(resources_per_worker={'CPU': 0.5})), or lower the stream's num_cpus."
        )
    return free - need
