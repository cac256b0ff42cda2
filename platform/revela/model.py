"""The Revela objective: a retriever's similarities weight in-batch attention inside an LM's NTP loss.

Per group of B chunks (method §1.4): the retriever encodes the query view and passage view of each chunk,
Sim = row-softmax(cos / tau) with the diagonal excluded; the LM runs each chunk alone (pass 2, capturing every
layer's keys/values, with gradient) and then again with in-batch attention over the other chunks' cached
keys/values weighted by Sim (pass 3). The training loss is pass 3's NTP cross-entropy over non-pad tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from revela.config import LoraSettings, ModelConfig
from revela.inbatch_lm import InBatchState, enable_inbatch_attention
from revela.protocol import EncodingProtocol
from revela.retriever import Retriever, is_decoder, native_protocol

BATCH_KEYS = ("query_input_ids", "query_attention_mask", "passage_input_ids", "passage_attention_mask",
              "lm_input_ids", "lm_attention_mask")


@dataclass
class RevelaOutput:
    loss: torch.Tensor
    """Pass-3 NTP loss (what is trained)."""
    doc_weights: torch.Tensor
    """Sim, [B, B], rows sum to 1 over j != i."""
    pass2_loss: torch.Tensor | None = None
    """The same chunks' NTP loss without in-batch attention (detached; a metric)."""


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over real (non-pad) target tokens."""
    labels = input_ids.masked_fill(attention_mask == 0, -100)[:, 1:]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def similarity_weights(query_emb: torch.Tensor, passage_emb: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sim_ij = softmax_j(cos(q_i, p_j) / tau) over j != i (embeddings are already L2-normalised).

    Always in fp32, autocast or not: at tau=1e-4 one bf16 step of a cosine near 0.9 is ~40 logits.
    """
    with torch.autocast(query_emb.device.type, enabled=False):
        scores = (query_emb.float() @ passage_emb.float().T) / temperature
        eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
        return scores.masked_fill(eye, float("-inf")).softmax(dim=-1)


def apply_finetune(module: nn.Module, mode: str, lora: LoraSettings, task_type: str) -> nn.Module:
    """'full' trains every weight, 'frozen' none, 'lora' wraps the module with peft adapters."""
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                         target_modules=lora.target_modules, task_type=task_type)
        return get_peft_model(module, cfg)
    module.requires_grad_(mode == "full")
    return module


class RevelaModel(nn.Module):
    def __init__(self, retriever: Retriever, lm: nn.Module, lm_tokenizer, temperature: float,
                 v_norm: bool | None = None, inbatch_chunk: int | None = None):
        super().__init__()
        self.retriever = retriever
        self.lm = lm
        self.lm_tokenizer = lm_tokenizer
        self.temperature = temperature
        self.v_norm = v_norm
        self.inbatch_chunk = inbatch_chunk

    @classmethod
    def from_config(cls, cfg: ModelConfig, lm_model: nn.Module | None = None,
                    retriever_backbone: nn.Module | None = None, tokenizers: tuple | None = None) -> "RevelaModel":
        """Build from names (offline assets, paths or hub ids); tests may pass ready modules/tokenizers instead."""
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

        from revela.assets import resolve_model

        rc, lc = cfg.retriever, cfg.lm
        if tokenizers is None:
            r_path, l_path = resolve_model(rc.name), resolve_model(lc.name)
            tokenizers = (AutoTokenizer.from_pretrained(r_path), AutoTokenizer.from_pretrained(l_path))
            # fp32 master weights whatever the checkpoint's dtype: autocast runs the bf16 math on GPU
            retriever_backbone = retriever_backbone or AutoModel.from_pretrained(r_path, dtype=torch.float32)
            lm_model = lm_model or AutoModelForCausalLM.from_pretrained(l_path, dtype=torch.float32)
        r_tok, l_tok = tokenizers
        protocol = retriever_protocol(cfg, retriever_backbone.config, getattr(r_tok, "name_or_path", ""))
        if lc.gradient_checkpointing:
            lm_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        enable_inbatch_attention(lm_model, lc.attn_implementation)
        lm_model.config.use_cache = False
        backbone = apply_finetune(retriever_backbone, rc.finetune, rc.lora, "FEATURE_EXTRACTION")
        for name, p in backbone.named_parameters():
            if ".pooler." in f".{name}":  # the backbone's own pooler head is unused: we pool hidden states
                p.requires_grad_(False)
        lm_model = apply_finetune(lm_model, lc.finetune, lc.lora, "CAUSAL_LM")
        return cls(Retriever(backbone, r_tok, protocol), lm_model, l_tok, cfg.objective.temperature,
                   cfg.objective.v_norm, cfg.objective.inbatch_chunk)

    def similarity(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        q = self.retriever.embed(batch["query_input_ids"], batch["query_attention_mask"])
        p = self.retriever.embed(batch["passage_input_ids"], batch["passage_attention_mask"])
        return similarity_weights(q, p, self.temperature)

    def forward(self, batch: dict[str, torch.Tensor], doc_weights: torch.Tensor | None = None,
                measure_pass2: bool = True) -> RevelaOutput:
        """One group. Tensors are [B, L] (a leading streamed dim of 1 is squeezed). `doc_weights` overrides Sim.

        V-norm: as configured, or (v_norm=None) on for prose and off for code groups (`is_code` in the batch).
        """
        v_norm = self.v_norm if self.v_norm is not None else not bool(batch.get("is_code", 0))
        batch = {k: (v[0] if v.dim() == 3 else v) for k, v in batch.items() if k in BATCH_KEYS}
        if batch["lm_input_ids"].shape[0] < 2:
            raise ValueError("a group needs at least 2 chunks: in-batch attention has nothing to attend to")
        weights = self.similarity(batch) if doc_weights is None else doc_weights
        ids, mask = batch["lm_input_ids"], batch["lm_attention_mask"]
        captured = InBatchState(capture=True)
        pass2 = self.lm(input_ids=ids, attention_mask=mask, revela_inbatch=captured,
                        logits_to_keep=0 if measure_pass2 else 1)
        pass2_loss = lm_loss(pass2.logits.detach(), ids, mask) if measure_pass2 else None
        del pass2
        state = captured.attend(weights, mask.bool(), v_norm, self.inbatch_chunk)
        pass3 = self.lm(input_ids=ids, attention_mask=mask, revela_inbatch=state)
        return RevelaOutput(lm_loss(pass3.logits, ids, mask), weights, pass2_loss)


def retriever_protocol(cfg: ModelConfig, backbone_config, path: str) -> EncodingProtocol:
    """The protocol the retriever is trained with: configured prefixes/length, pooling resolved for the backbone."""
    rc = cfg.retriever
    pooling = rc.pooling
    if pooling == "auto":
        pooling = "eos" if is_decoder(backbone_config) else native_protocol(path, backbone_config).pooling
    return EncodingProtocol(pooling=pooling, query_prefix=rc.query_prefix, passage_prefix=rc.passage_prefix,
                            max_length=rc.max_length)


def retriever_protocol_for(cfg: ModelConfig) -> EncodingProtocol:
    """The training protocol, without loading weights (for tokenizing in data workers)."""
    from transformers import AutoConfig

    from revela.assets import resolve_model

    path = resolve_model(cfg.retriever.name)
    return retriever_protocol(cfg, AutoConfig.from_pretrained(path), path)
