"""Encode texts with a model's own protocol: in process, or as Ray Data `map_batches` over an actor pool.

Both paths call `Retriever.encode` on the same length-sorted batches, so they give the same embeddings:

- `encode_local(retriever, texts, kind)`: one process, a tqdm progress bar; best for small sets and tests.
- `encode_ray(model, {"passage": docs, "query": queries})`: the texts become a Ray dataset of length-sorted
  blocks, and `map_batches(EncoderActor, compute=ActorPoolStrategy(size=n))` encodes them. Each actor loads the
  model once (from the path, alias or checkpoint directory, with its travelling protocol) and, when the cluster
  has GPUs, holds one GPU. Ray Data shows its progress bars (set RAY_DATA_DISABLE_PROGRESS_BARS=1 in CI), and a
  tqdm bar counts rows as they come back.

The model is named by string (not pickled), so every actor must be able to read it: on several nodes, put
checkpoints on shared storage.
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

KINDS = ("passage", "query")


def _length_order(texts: list[str]) -> np.ndarray:
    """Longest first, stable: the order `Retriever.encode` batches in."""
    return np.argsort([-len(t) for t in texts], kind="stable")


def encode_local(retriever, texts: list[str], kind: str, batch_size: int = 64, progress: bool = False,
                 desc: str | None = None) -> np.ndarray:
    """float32 [N, D] embeddings from a loaded `Retriever`, in chunks so a progress bar can advance."""
    from tqdm.auto import tqdm

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    order = _length_order(texts)
    chunk = batch_size * 8
    out: np.ndarray | None = None
    with tqdm(total=len(texts), desc=desc or f"encode {kind}s", unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), chunk):
            idx = order[start: start + chunk]
            emb = retriever.encode([texts[i] for i in idx], kind=kind, batch_size=batch_size)
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
            out[idx] = emb
            bar.update(len(idx))
    if out is None:
        dim = retriever.backbone.config.hidden_size
        out = np.zeros((0, dim), dtype=np.float32)
    return out


class EncoderActor:
    """A Ray Data callable class: loads the model once, then encodes each block it is given."""

    def __init__(self, model: str, protocol: dict | None = None, batch_size: int = 64, dtype: str | None = None,
                 threads: int | None = None):
        import torch

        from revela.protocol import EncodingProtocol
        from revela.retriever import Retriever

        if threads:
            torch.set_num_threads(threads)
        self.retriever = Retriever.load(model, protocol=EncodingProtocol(**protocol) if protocol else None,
                                        dtype=getattr(torch, dtype) if dtype else None)
        if torch.cuda.is_available():
            self.retriever.to("cuda")
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        kinds = np.asarray(batch["kind"])
        emb = None
        for k, kind in enumerate(KINDS):
            rows = np.flatnonzero(kinds == k)
            if rows.size == 0:
                continue
            part = self.retriever.encode([texts[i] for i in rows], kind=kind, batch_size=self.batch_size)
            if emb is None:
                emb = np.empty((len(texts), part.shape[1]), dtype=np.float32)
            emb[rows] = part
        return {"kind": kinds, "idx": np.asarray(batch["idx"]), "emb": emb}


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0


def encode_ray(model: str, texts: dict[str, list[str]], *, protocol: dict | None = None, batch_size: int = 64,
               num_actors: int | None = None, use_gpu: bool | None = None, cpus_per_actor: float = 1,
               dtype: str | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    """{kind: float32 [N, D]} for texts {"passage": [...], "query": [...]} via an actor pool of encoders.

    num_actors defaults to the number of GPUs when `use_gpu` (auto: the cluster has GPUs), else to
    1 actor per `cpus_per_actor` of half the cluster's CPUs (at least 1). protocol (a dict of
    `EncodingProtocol` fields) overrides the model's own, e.g. to change max_length.
    """
    import pyarrow as pa
    import ray
    from tqdm.auto import tqdm

    unknown = set(texts) - set(KINDS)
    if unknown:
        raise ValueError(f"kinds must be among {KINDS}, got {sorted(unknown)}")
    if not ray.is_initialized():
        ray.init()
    if use_gpu is None:
        use_gpu = cluster_gpus() > 0
    if num_actors is None:
        num_actors = max(1, cluster_gpus()) if use_gpu else \
            max(1, int(ray.cluster_resources().get("CPU", 1) // 2 // max(cpus_per_actor, 1e-9)))
    total = sum(len(v) for v in texts.values())
    result = {kind: None for kind in texts}
    if total == 0:
        return {kind: np.zeros((0, 0), np.float32) for kind in texts}

    # length-sorted blocks per kind, rows per block a multiple of batch_size (the same batches as encode_local)
    rows_per_block = batch_size * max(1, min(8, math.ceil(total / (batch_size * num_actors * 4))))
    blocks = []
    for kind, items in texts.items():
        order = _length_order(items)
        for start in range(0, len(items), rows_per_block):
            idx = order[start: start + rows_per_block]
            blocks.append(pa.table({"idx": pa.array(idx, pa.int64()),
                                    "kind": pa.array(np.full(len(idx), KINDS.index(kind)), pa.int8()),
                                    "text": pa.array([items[i] for i in idx], pa.string())}))
    blocks.sort(key=lambda t: -max(len(s) for s in t.column("text").to_pylist()))  # longest first: shorter tail
    ds = ray.data.from_arrow(blocks).map_batches(
        EncoderActor,
        fn_constructor_kwargs={"model": model, "protocol": protocol, "batch_size": batch_size, "dtype": dtype,
                               "threads": None if use_gpu else max(1, int(cpus_per_actor))},
        batch_size=None,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(num_actors, len(blocks))),
        num_gpus=1 if use_gpu else 0,
        num_cpus=cpus_per_actor,
    )
    with tqdm(total=total, desc="encode (ray)", unit="text", disable=not progress) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            emb = np.asarray(batch["emb"], dtype=np.float32)
            for k, kind in enumerate(KINDS):
                rows = np.flatnonzero(batch["kind"] == k)
                if rows.size == 0:
                    continue
                if result[kind] is None:
                    result[kind] = np.full((len(texts[kind]), emb.shape[1]), np.nan, dtype=np.float32)
                result[kind][batch["idx"][rows]] = emb[rows]
            bar.update(len(batch["idx"]))
    dim = next(v.shape[1] for v in result.values() if v is not None)
    out = {}
    for kind, arr in result.items():
        arr = np.zeros((0, dim), np.float32) if arr is None else arr
        if np.isnan(arr).any():
            raise RuntimeError(f"encode_ray: {int(np.isnan(arr).any(axis=1).sum())} {kind} rows came back empty")
        out[kind] = arr
    return out

