"""In-batch attention (method §1.3), the numerical heart of Revela.

For every pair of chunks (i, j) of one group the queries of chunk i attend, with a mask that hides padding only,
to the cached keys/values of chunk j; each b_ij is a separate softmax over j's tokens. The B x B results are mixed
with the retriever's weights: out_i = sum_j w_ij * b~_ij. Several groups can share one call: chunks are laid out
group after group ([G*B, ...]) and attend only inside their own group.

Two exact implementations, chosen by device:
  - "triton" (CUDA): fused kernels in revela.attention_triton, flash-style per chunk j, nothing [B, B, ...] in memory;
  - "torch" (anything): the pairwise scores would be a [G, B, B, H, L, T] tensor; it is never built. Chunks j are
    processed a few at a time and each block is recomputed in backward (activation checkpointing).
A chunk j with no real key (all padding) contributes nothing.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch.utils.checkpoint import checkpoint

V_NORM_EPS = 1e-6
_BLOCK_ELEMENTS = 1 << 25  # torch path: scores per block of chunks j, 32M elements (128 MiB in fp32)

Backend = Literal["auto", "torch", "triton"]


def inbatch_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    doc_weights: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    v_norm: bool | torch.Tensor = True,
    scaling: float | None = None,
    chunk_size: int | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Sum_j w_ij * b~_ij for every chunk i of every group.

    query [G*B, H, L, d]; key/value [G*B, Hkv, T, d] with H % Hkv == 0 (GQA, no copies); doc_weights [B, B] (one
    group) or [G, B, B]; key_mask [G*B, T] bool (True = real token); v_norm a bool or one bool per group ([G]).
    scaling defaults to 1/sqrt(d). Returns [G*B, H, L, d]. With V-norm, b_ij is divided by
    (softmax(q_i k_j^T) . ||v_j||_2 + 1e-6), per head and query token. `chunk_size` (chunks j per block) only
    concerns the torch path; `backend="auto"` takes the fused kernels on CUDA when Triton is installed.
    Query, key and value are computed in one dtype, `compute_dtype`, which is also the output's.
    """
    weights = doc_weights if doc_weights.dim() == 3 else doc_weights.unsqueeze(0)
    N, H, L, d = query.shape
    Nk, Hkv, T, dk = key.shape
    if weights.dim() != 3 or weights.shape[1] != weights.shape[2]:
        raise ValueError(f"doc_weights must be [B, B] or [G, B, B], got {tuple(doc_weights.shape)}")
    G, B = weights.shape[:2]
    if value.shape != key.shape:
        raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must have the same shape")
    if Nk != N or dk != d:
        raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)} disagree on chunks or head dim")
    if N != G * B:
        raise ValueError(f"doc_weights {tuple(doc_weights.shape)} describe {G} group(s) of {B} chunks, "
                         f"but the query holds {N} chunks")
    if H % Hkv:
        raise ValueError(f"{H} query heads are not a multiple of {Hkv} key/value heads")
    if key_mask is not None and key_mask.shape != (N, T):
        raise ValueError(f"key_mask must be [{N}, {T}], got {tuple(key_mask.shape)}")
    if torch.is_tensor(v_norm) and v_norm.shape != (G,):
        raise ValueError(f"v_norm must be a bool or one flag per group ([{G}]), got {tuple(v_norm.shape)}")
    scaling = 1.0 / math.sqrt(d) if scaling is None else scaling
    dtype = compute_dtype(query, key, value)
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)  # differentiable: grads keep each input's dtype
    if resolve_backend(backend, query) == "triton":
        from revela.attention_triton import fused_inbatch_attention

        return fused_inbatch_attention(query, key, value, weights, key_mask, v_norm, scaling)
    flags = torch.as_tensor(v_norm, dtype=torch.bool, device=query.device).reshape(-1).expand(G)
    return _blockwise(query, key, value, weights, key_mask, flags, scaling, chunk_size)


def compute_dtype(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.dtype:
    """The one dtype in-batch attention computes and returns in, whichever backend: under autocast (for the
    inputs' device type) the autocast dtype, what SDPA gets next to it (the LM's rotary embedding returns fp32
    queries and keys under autocast while values stay in the autocast dtype); outside autocast the promoted dtype
    of the three. As under autocast, fp64 inputs are never cast down."""
    dtypes = (query.dtype, key.dtype, value.dtype)
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type) and torch.float64 not in dtypes:
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(torch.promote_types(dtypes[0], dtypes[1]), dtypes[2])


def resolve_backend(backend: Backend, query: torch.Tensor) -> str:
    if backend == "auto":
        fusable = query.is_cuda and query.dtype != torch.float64
        return "triton" if fusable and triton_available() else "torch"
    if backend == "triton" and not triton_available():
        raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
    if backend not in ("torch", "triton"):
        raise ValueError(f"unknown in-batch attention backend {backend!r}; use auto, torch or triton")
    return backend


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _blockwise(query, key, value, weights, key_mask, flags, scaling, chunk_size):
    G, B = weights.shape[:2]
    _, H, L, d = query.shape
    Hkv, T = key.shape[1], key.shape[2]
    if chunk_size is None:
        chunk_size = max(1, _BLOCK_ELEMENTS // max(1, G * B * H * L * T))
    # grouped queries share one key/value head: no repeat_kv copy
    q = query.reshape(G, B, Hkv, H // Hkv, L, d)
    k, v = key.reshape(G, B, Hkv, T, d), value.reshape(G, B, Hkv, T, d)
    mask = None if key_mask is None else key_mask.reshape(G, B, T)
    acc = torch.promote_types(query.dtype, torch.float32)  # softmax and V-norm in at least fp32
    v_norms = value.to(acc).norm(dim=-1).reshape(G, B, Hkv, T) if bool(flags.any()) else None
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value, weights))
    out = None
    for j0 in range(0, B, chunk_size):
        j = slice(j0, j0 + chunk_size)
        args = (q, k[:, j], v[:, j], weights[:, :, j], None if mask is None else mask[:, j],
                None if v_norms is None else v_norms[:, j], flags)
        part = checkpoint(_block, *args, scaling, use_reentrant=False) if needs_grad else _block(*args, scaling)
        out = part if out is None else out + part
    return out.reshape(G * B, H, L, d)


def _block(q, k, v, w, mask, v_norms, flags, scaling):
    """Contribution of a block of chunks j to every chunk i of every group: [G, B, Hkv, R, L, d]."""
    scores = torch.einsum("gbhrld,gjhtd->gbjhrlt", q, k) * scaling
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, :, None, None, None, :], torch.finfo(scores.dtype).min)
    probs = scores.to(torch.promote_types(scores.dtype, torch.float32)).softmax(dim=-1)
    # w_ij (and the V-norm denominator) scale whole rows of probs, so the sum over j and t is one contraction.
    coeff = w.to(probs.dtype)
    if mask is not None:  # a chunk j with no real key contributes nothing
        coeff = coeff * mask.any(-1)[:, None, :].to(probs.dtype)
    coeff = coeff[..., None, None, None].expand(probs.shape[:-1])
    if v_norms is not None:
        with torch.autocast(probs.device.type, enabled=False):  # keep the denominator in probs' precision
            denom = torch.einsum("gbjhrlt,gjht->gbjhrl", probs, v_norms.to(probs.dtype)) + V_NORM_EPS
        coeff = torch.where(flags[:, None, None, None, None, None], coeff / denom, coeff)
    return torch.einsum("gbjhrlt,gjhtd->gbhrld", (probs * coeff.unsqueeze(-1)).to(v.dtype), v)
