"""In-batch attention (method §1.3), the numerical heart of Revela.

For every pair of chunks (i, j) the queries of chunk i attend, with a mask that hides padding only, to the
cached keys/values of chunk j; each b_ij is a separate softmax over j's tokens. The B x B results are mixed
with the retriever's weights: out_i = sum_j w_ij * b~_ij.

The pairwise scores would be a [B, B, H, L, L] tensor. It is never built: chunks j are processed a few at a
time, and each block is recomputed in backward (activation checkpointing), so autograd keeps only the inputs.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

V_NORM_EPS = 1e-6
_BLOCK_ELEMENTS = 1 << 25  # scores per block of chunks j: 32M elements (128 MiB in fp32)


def inbatch_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    doc_weights: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    v_norm: bool = True,
    scaling: float | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Sum_j w_ij * b~_ij for every chunk i.

    query [B, H, L, d]; key/value [B, Hkv, T, d] with H % Hkv == 0 (GQA); doc_weights [B, B];
    key_mask [B, T] bool (True = real token). scaling defaults to 1/sqrt(d). Returns [B, H, L, d].
    With v_norm, b_ij is divided by (softmax(q_i k_j^T) . ||v_j||_2 + 1e-6), per head and query token.
    """
    B, H, L, d = query.shape
    Bk, Hkv, T, dk = key.shape
    if value.shape != key.shape:
        raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must have the same shape")
    if Bk != B or dk != d:
        raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)} disagree on batch or head dim")
    if H % Hkv:
        raise ValueError(f"{H} query heads are not a multiple of {Hkv} key/value heads")
    if doc_weights.shape != (B, B):
        raise ValueError(f"doc_weights must be [{B}, {B}], got {tuple(doc_weights.shape)}")
    if key_mask is not None and key_mask.shape != (B, T):
        raise ValueError(f"key_mask must be [{B}, {T}], got {tuple(key_mask.shape)}")
    scaling = 1.0 / math.sqrt(d) if scaling is None else scaling
    if chunk_size is None:
        chunk_size = max(1, _BLOCK_ELEMENTS // max(1, B * H * L * T))

    q = query.reshape(B, Hkv, H // Hkv, L, d)  # grouped queries share one key/value head, no repeat_kv copy
    acc = torch.promote_types(query.dtype, torch.float32)  # softmax and V-norm in at least fp32
    v_norms = value.to(acc).norm(dim=-1) if v_norm else None
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (query, key, value, doc_weights)
    )
    out = None
    for j0 in range(0, B, chunk_size):
        j = slice(j0, j0 + chunk_size)
        args = (q, key[j], value[j], doc_weights[:, j],
                None if key_mask is None else key_mask[j],
                None if v_norms is None else v_norms[j])
        if needs_grad:
            part = checkpoint(_block, *args, scaling, use_reentrant=False)
        else:
            part = _block(*args, scaling)
        out = part if out is None else out + part
    return out.reshape(B, H, L, d)


def _block(q, k, v, w, mask, v_norms, scaling):
    """Contribution of a block of chunks j to every chunk i: [B, Hkv, G, L, d]."""
    scores = torch.einsum("bhgld,jhtd->bjhglt", q, k) * scaling
    if mask is not None:
        scores = scores.masked_fill(~mask[None, :, None, None, None, :], torch.finfo(scores.dtype).min)
    probs = scores.to(torch.promote_types(scores.dtype, torch.float32)).softmax(dim=-1)
    # w_ij (and the V-norm denominator) scale whole rows of probs, so the sum over j and t is one contraction.
    coeff = w.to(probs.dtype)[:, :, None, None, None]
    if v_norms is not None:
        with torch.autocast(probs.device.type, enabled=False):  # keep the denominator in probs' precision
            coeff = coeff / (torch.einsum("bjhglt,jht->bjhgl", probs, v_norms.to(probs.dtype)) + V_NORM_EPS)
    else:
        coeff = coeff.expand(probs.shape[:-1])
    return torch.einsum("bjhglt,jhtd->bhgld", (probs * coeff.unsqueeze(-1)).to(v.dtype), v)
