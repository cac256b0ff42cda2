"""The LM's two passes of a Revela step and their NTP loss, with the memory levers of `model.lm`.

- `loss_chunk_tokens` (a chunked cross-entropy): the LM's body gives the last hidden states; its head and the
  cross-entropy run over chunks of that many token positions under activation checkpointing, so the
  [tokens, vocab] logits and their fp32 log-softmax never exist for more than one chunk, in forward or backward.
  Same loss and gradients as the head over all tokens at once (up to the order of float sums). An unlogged
  pass 2 runs no head at all; a logged one scores its loss without gradient.
- `checkpoint` (per-pass layer checkpointing): transformers' own checkpointing of every decoder layer, switched on
  for pass 2, pass 3 or both. The captured keys/values stay exact: non-reentrant checkpointing replays pass 2's
  layer (same dropout draws) when pass 3's gradient reaches them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from revela.inbatch_lm import InBatchState


def next_token_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[N, L] targets aligned with each position's hidden state: the next real token, -100 where there is none."""
    labels = input_ids.masked_fill(attention_mask == 0, -100)[:, 1:]
    return F.pad(labels, (0, 1), value=-100)


def lm_body(lm: nn.Module) -> nn.Module:
    """The transformer body of a causal LM (or of its peft wrapper): what returns the last hidden state."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return base.get_decoder()


def head_logits(lm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """What the LM's forward turns hidden states into: its output embeddings, then the final soft-cap if any."""
    logits = lm.get_output_embeddings()(hidden)
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def chunked_group_lm_loss(lm: nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor, groups: int, chunk_tokens: int) -> torch.Tensor:
    """Mean next-token cross-entropy per group of consecutive rows ([groups]), from the last hidden states [N, L, D],
    with the head and the cross-entropy over `chunk_tokens` positions at a time (recomputed in backward)."""
    labels = next_token_labels(input_ids, attention_mask).flatten()
    flat = hidden.flatten(0, 1)  # a view: what each chunk's checkpoint keeps is a slice of the hidden states

    def chunk_loss(h, y):
        return F.cross_entropy(head_logits(lm, h).float(), y, ignore_index=-100, reduction="none")

    needs_grad = torch.is_grad_enabled() and hidden.requires_grad
    tokens = torch.cat([
        checkpoint(chunk_loss, flat[s:s + chunk_tokens], labels[s:s + chunk_tokens], use_reentrant=False,
                   preserve_rng_state=False) if needs_grad else chunk_loss(flat[s:s + chunk_tokens],
                                                                          labels[s:s + chunk_tokens])
        for s in range(0, flat.shape[0], chunk_tokens)])
    real = (labels != -100).view(groups, -1).sum(-1)
    return tokens.view(groups, -1).sum(-1) / real.clamp_min(1)


def enable_layer_checkpointing(model: nn.Module) -> None:
    """transformers' per-layer activation checkpointing, non-reentrant, on a bare (not yet peft-wrapped) model."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # only reentrant checkpointing needs the embeddings' output to require grad: without it nothing is kept for them
    model.disable_input_require_grads()


def checkpointed_layers(lm: nn.Module) -> list[nn.Module]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in lm.modules() if isinstance(m, GradientCheckpointingLayer)]


class LMPasses:
    """Runs pass 2 or pass 3 of the LM over G*B chunks and returns the per-group NTP loss ([G])."""

    def __init__(self, loss_chunk_tokens: int | None = None, checkpoint_passes: tuple[int, ...] = ()):
        self.loss_chunk_tokens = loss_chunk_tokens
        self.checkpoint_passes = tuple(checkpoint_passes)
        self._layers: list[nn.Module] | None = None

    def prepare(self, lm: nn.Module) -> None:
        """Call once on the bare transformers LM, before peft wraps it."""
        if self.checkpoint_passes:
            enable_layer_checkpointing(lm)
        if self.loss_chunk_tokens:
            check_head(lm)

    def run(self, lm: nn.Module, ids: torch.Tensor, mask: torch.Tensor, groups: int, state: InBatchState,
            number: int, with_loss: bool = True) -> torch.Tensor | None:
        """Pass `number` (2: `state` captures keys/values; 3: `state` attends). Pass 2's loss is detached (a
        metric) and only computed `with_loss`; pass 3's carries the gradient."""
        from revela.model import group_lm_loss

        if self.checkpoint_passes:
            if self._layers is None:
                self._layers = checkpointed_layers(lm)
            on = number in self.checkpoint_passes
            for layer in self._layers:
                layer.gradient_checkpointing = on
        if not self.loss_chunk_tokens:
            out = lm(input_ids=ids, attention_mask=mask, revela_inbatch=state,
                     logits_to_keep=0 if with_loss else 1)
            if number == 2:
                return group_lm_loss(out.logits.detach(), ids, mask, groups) if with_loss else None
            return group_lm_loss(out.logits, ids, mask, groups)
        hidden = lm_body(lm)(input_ids=ids, attention_mask=mask, revela_inbatch=state).last_hidden_state
        if number == 2:
            if not with_loss:
                return None
            with torch.no_grad():
                return chunked_group_lm_loss(lm, hidden.detach(), ids, mask, groups, self.loss_chunk_tokens)
        return chunked_group_lm_loss(lm, hidden, ids, mask, groups, self.loss_chunk_tokens)


def check_head(lm: nn.Module) -> None:
    """The chunked loss applies the head as `head_logits` does; refuse an LM whose forward does more (a logit scale,
    another soft-cap): compared on a few tokens."""
    was_training = lm.training
    lm.eval()
    try:
        device = lm.get_output_embeddings().weight.device
        ids = torch.arange(1, 5, device=device)[None] % lm.config.vocab_size
        with torch.no_grad():
            expected = lm(input_ids=ids).logits
            got = head_logits(lm, lm_body(lm)(input_ids=ids).last_hidden_state)
    finally:
        lm.train(was_training)
    if got.shape != expected.shape or not torch.allclose(got.float(), expected.float(), rtol=1e-4, atol=1e-5):
        raise ValueError(f"model.lm.loss_chunk_tokens: {type(lm).__name__}'s forward does more to its logits than "
                         "the output embeddings and a final soft-cap; set model.lm.loss_chunk_tokens: null")
