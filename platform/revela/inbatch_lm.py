"""Run a stock transformers causal LM with Revela's in-batch attention, through its attention interface.

We register one attention function per base kernel (e.g. "revela_sdpa" wraps "sdpa") and switch the LM to it
with `set_attn_implementation`. Per forward call, a `revela_inbatch` keyword argument (transformers passes
extra kwargs down to every attention call) carries an `InBatchState`:
  - pass 2 (`capture`): each chunk alone; every layer stores its post-RoPE keys/values;
  - pass 3 (`attend`): each layer adds inbatch_attention(q_i, K_j, V_j, Sim) to its own causal attention
    output, before o_proj (method §1.3). Without the kwarg the LM behaves exactly like the base kernel.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from revela.attention import inbatch_attention

STATE_KWARG = "revela_inbatch"
PREFIX = "revela_"


@dataclass
class InBatchState:
    capture: bool
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    doc_weights: torch.Tensor | None = None
    """[B, B] or [G, B, B] (chunks laid out group after group)."""
    key_mask: torch.Tensor | None = None
    v_norm: bool | torch.Tensor = True
    """One bool, or one per group."""
    chunk_size: int | None = None
    backend: str = "auto"

    def attend(self, doc_weights: torch.Tensor, key_mask: torch.Tensor, v_norm: bool | torch.Tensor,
               chunk_size: int | None = None, backend: str = "auto") -> "InBatchState":
        """The pass-3 state that reads what this (pass-2) state captured."""
        return InBatchState(False, self.keys, self.values, doc_weights, key_mask, v_norm, chunk_size, backend)


def _base_kernel(base_name: str, module):
    """"eager" is not in the registry: it is each model's own `eager_attention_forward` (softcapping etc. included)."""
    if base_name != "eager":
        return ALL_ATTENTION_FUNCTIONS[base_name]
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise ValueError(f"{type(module).__name__} has no eager_attention_forward; use attn_implementation sdpa")
    return eager


def _wrap(base_name: str):
    def revela_attention(module, query, key, value, attention_mask, **kwargs):
        state: InBatchState | None = kwargs.pop(STATE_KWARG, None)
        out, weights = _base_kernel(base_name, module)(module, query, key, value, attention_mask, **kwargs)
        if state is None:
            return out, weights
        layer = module.layer_idx
        if state.capture:
            state.keys[layer], state.values[layer] = key, value
            return out, weights
        extra = inbatch_attention(query, state.keys[layer], state.values[layer], state.doc_weights,
                                  state.key_mask, v_norm=state.v_norm, scaling=kwargs.get("scaling"),
                                  chunk_size=state.chunk_size, backend=state.backend)
        return out + extra.transpose(1, 2).to(out.dtype), weights  # base output is [B, L, H, d]

    return revela_attention


def register(base_name: str = "sdpa") -> str:
    """Register the in-batch wrapper of `base_name` (idempotent); returns the name to pass to set_attn_implementation."""
    if base_name != "eager" and base_name not in ALL_ATTENTION_FUNCTIONS:
        raise ValueError(f"unknown attention kernel {base_name!r}; available: {sorted(ALL_ATTENTION_FUNCTIONS.keys())}")
    name = PREFIX + base_name
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _wrap(base_name))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base_name])
    return name


def enable_inbatch_attention(lm, base_name: str = "sdpa"):
    """Switch a loaded causal LM (or its peft wrapper) to the in-batch-capable attention; returns it."""
    lm.set_attn_implementation(register(base_name))
    return lm
