"""Plain reference for in-batch attention: builds the full [B, B, H, L, T] tensor (the oracle the tests trust)."""

import math

import torch


def plain_inbatch_attention(query, key, value, doc_weights, key_mask=None, v_norm=True, scaling=None):
    B, H, L, d = query.shape
    Hkv = key.shape[1]
    key = key.repeat_interleave(H // Hkv, dim=1)
    value = value.repeat_interleave(H // Hkv, dim=1)
    scaling = 1.0 / math.sqrt(d) if scaling is None else scaling
    scores = torch.einsum("ihld,jhtd->ijhlt", query, key) * scaling
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[None, :, None, None, :], torch.finfo(scores.dtype).min)
    probs = scores.to(torch.promote_types(scores.dtype, torch.float32)).softmax(-1).to(query.dtype)
    b = torch.einsum("ijhlt,jhtd->ijhld", probs, value)
    if v_norm:
        n = torch.einsum("ijhlt,jht->ijhl", probs, value.norm(dim=-1))
        b = b / (n[..., None] + 1e-6)
    return torch.einsum("ij,ijhld->ihld", doc_weights.to(b.dtype), b)  # fp32 weights next to bf16 values
