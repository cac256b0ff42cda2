"""Model sizes and a training-FLOPs estimate per group, from the shapes actually processed.

Sizes are counted on the meta device (no weights are loaded). The estimate is the usual 2·N FLOPs per token
forward and 2·N backward for activation gradients, plus 2·N for weight gradients of fully fine-tuned weights
(LoRA adapters' own weight gradients are negligible and not counted), over every padded position the step
computes: a group of B chunks costs

- retriever: two views (query and passage) of B chunks at its max length; no backward when it is frozen;
- LM: pass 2 and pass 3 over B chunks at its max length, both with backward (the in-batch keys/values of pass 2
  carry gradient), plus the LM head (vocab x hidden per token) and each chunk's own attention scores
  (4·L²·d per layer);
- in-batch attention: every chunk i attends to every other chunk j's keys/values in every layer,
  B·(B-1)·4·L²·d per layer forward, twice that backward.

N excludes the input embedding table (a lookup). Activation recomputation is not counted (model FLOPs, not
hardware FLOPs). Multiply by the groups a trial processed (groups x B x L positions) for its total.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelShape:
    params: int
    """Every parameter of the backbone (embeddings included): the model size plotted."""
    non_embedding: int
    hidden: int
    layers: int
    vocab: int


@functools.lru_cache(maxsize=None)
def model_shape(name: str) -> ModelShape:
    """Sizes of the backbone behind `name` (alias, folder or hub id), counted without loading weights."""
    import torch
    from transformers import AutoConfig, AutoModel

    from revela.assets import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(name))
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ModelShape(params=total, non_embedding=total - embedding, hidden=int(text.hidden_size),
                      layers=int(text.num_hidden_layers), vocab=int(text.vocab_size))


def _train_flops(n: int, tokens: float, finetune: str) -> float:
    """Forward, activation-gradient and (for full fine-tuning) weight-gradient FLOPs of n weights over tokens."""
    forward = 2.0 * n * tokens
    if finetune == "frozen":
        return forward
    return forward * (3.0 if finetune == "full" else 2.0)


def flops_per_group(run: dict, retriever: ModelShape, lm: ModelShape) -> dict[str, float]:
    """Estimated training FLOPs of one group of B chunks under `run` (a RunConfig dict), by part."""
    model = run["model"]
    B = int(run["data"]["group_size"])
    r_len, l_len = int(model["retriever"]["max_length"]), int(model["lm"]["max_length"])
    r_tokens, l_tokens = 2 * B * r_len, B * l_len
    r_tune, l_tune = model["retriever"]["finetune"], model["lm"]["finetune"]
    r_backward = 1.0 if r_tune == "frozen" else 3.0
    retriever_flops = _train_flops(retriever.non_embedding, r_tokens, r_tune)
    retriever_flops += r_backward * 2 * B * 4 * r_len**2 * retriever.hidden * retriever.layers
    # the LM always runs backward: the gradient reaches the retriever through the in-batch weights
    lm_tune = l_tune if l_tune != "frozen" else "lora"
    per_pass = _train_flops(lm.non_embedding + lm.vocab * lm.hidden, l_tokens, lm_tune)
    per_pass += 3.0 * B * 4 * l_len**2 * lm.hidden * lm.layers
    inbatch = 3.0 * B * (B - 1) * 4 * l_len**2 * lm.hidden * lm.layers
    parts = {"retriever": retriever_flops, "lm": 2 * per_pass, "inbatch_attention": inbatch}
    parts["total"] = sum(parts.values())
    return parts


def shapes(run: dict) -> dict[str, dict]:
    return {"retriever": asdict(model_shape(run["model"]["retriever"]["name"])),
            "lm": asdict(model_shape(run["model"]["lm"]["name"]))}
