"""Top-k search over document embeddings with FAISS.

The default index is exact inner product (`IndexFlatIP`; with L2-normalised embeddings this is cosine). For
corpora that are too big or too slow for that, pass any FAISS index-factory string, e.g. `"HNSW32"` (graph, no
training), `"IVF1024,Flat"` (inverted lists), `"IVF4096,SQ8"` (4x smaller vectors) or `"IVF4096,PQ64"`, with
search-time parameters such as `params="nprobe=32"` or `"efSearch=128"`. Big corpora can also be searched in
shards (`shard_size`): each shard is indexed and searched on its own and the top-k lists are merged, so the index
of only one shard is in memory at a time (the embeddings themselves still are).
"""

from __future__ import annotations

import faiss
import numpy as np

EXACT = "Flat"


def _as_f32(x: np.ndarray, what: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-d array [N, D], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or inf values")
    return x


def build_index(docs: np.ndarray, index: str = EXACT, params: str | None = None) -> faiss.Index:
    """A FAISS inner-product index over `docs` [N, D] built from a factory string (trained when it needs to be)."""
    docs = _as_f32(docs, "document embeddings")
    idx = faiss.index_factory(docs.shape[1], index, faiss.METRIC_INNER_PRODUCT)
    if not idx.is_trained:
        idx.train(docs)
    idx.add(docs)
    if params:
        faiss.ParameterSpace().set_index_parameters(idx, params)
    return idx


def search(queries: np.ndarray, docs: np.ndarray, k: int = 100, index: str = EXACT, params: str | None = None,
           shard_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k'], doc indices [Q, k']) best first, k' = min(k, N); approximate indexes may pad with -1."""
    queries, docs = _as_f32(queries, "query embeddings"), _as_f32(docs, "document embeddings")
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"query dim {queries.shape[1]} != document dim {docs.shape[1]}: not the same model?")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n = docs.shape[0]
    k = min(k, n)
    if n == 0 or queries.shape[0] == 0:
        return np.zeros((queries.shape[0], 0), np.float32), np.zeros((queries.shape[0], 0), np.int64)
    if not shard_size or shard_size >= n:
        scores, ids = build_index(docs, index, params).search(queries, k)
        return scores, ids
    merged = faiss.ResultHeap(queries.shape[0], k, keep_max=True)
    for start in range(0, n, shard_size):
        shard = docs[start: start + shard_size]
        s, i = build_index(shard, index, params).search(queries, min(k, shard.shape[0]))
        if s.shape[1] < k:  # pad a short last shard so the heap sees [Q, k]
            pad = k - s.shape[1]
            s = np.pad(s, ((0, 0), (0, pad)), constant_values=-np.inf)
            i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
        merged.add_result(s, np.where(i >= 0, i + start, -1))
    merged.finalize()
    return merged.D, merged.I


def to_run(query_ids: list[str], doc_ids: list[str], scores: np.ndarray,
           indices: np.ndarray) -> dict[str, dict[str, float]]:
    """A pytrec_eval run {query id: {doc id: score}} from `search` output; -1 padding is dropped."""
    run = {}
    for qid, row_s, row_i in zip(query_ids, scores, indices):
        run[qid] = {doc_ids[j]: float(s) for s, j in zip(row_s, row_i) if j >= 0}
    return run
