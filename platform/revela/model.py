"""The Revela objective: a retriever's similarities weight in-batch attention inside an LM's NTP loss.

Per group of B chunks (method §1.4): the retriever encodes the query view and passage view of each chunk,
Sim = row-softmax(cos / tau) with the diagonal excluded; the LM runs each chunk alone (pass 2, capturing every
layer's keys/values, with gradient) and then again with in-batch attention over the other chunks' cached
keys/values weighted by Sim (pass 3). The training loss is pass 3's NTP cross-entropy over non-pad tokens.

G groups can go through one forward as a batch of G*B sequences: Sim and in-batch attention stay inside each
group, and the loss is the mean of the G per-group losses, so it equals G separate one-group forwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from revela.config import LoraSettings, ModelConfig
from revela.inbatch_lm import InBatchState, enable_inbatch_attention
from revela.lm_passes import LMPasses, enable_layer_checkpointing
from revela.protocol import EncodingProtocol
from revela.retriever import Retriever, is_decoder, native_protocol

BATCH_KEYS = ("query_input_ids", "query_attention_mask", "passage_input_ids", "passage_attention_mask",
              "lm_input_ids", "lm_attention_mask")


@dataclass
class RevelaOutput:
    loss: torch.Tensor
    """Pass-3 NTP loss (what is trained): the mean over groups of each group's mean token loss."""
    doc_weights: torch.Tensor
    """Sim, [B, B] for a one-group batch of [B, L] tensors, else [G, B, B]; rows sum to 1 over j != i."""
    pass2_loss: torch.Tensor | None = None
    """The same chunks' NTP loss without in-batch attention (detached; a metric)."""


def group_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  groups: int = 1) -> torch.Tensor:
    """Mean next-token cross-entropy over real (non-pad) target tokens, per group of consecutive rows: [groups]."""
    labels = input_ids.masked_fill(attention_mask == 0, -100)[:, 1:]
    tokens = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                             reduction="none")
    real = (labels != -100).view(groups, -1).sum(-1)
    return tokens.view(groups, -1).sum(-1) / real.clamp_min(1)


def similarity_weights(query_emb: torch.Tensor, passage_emb: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sim_ij = softmax_j(cos(q_i, p_j) / tau) over j != i (embeddings are already L2-normalised).

    Embeddings are [B, E] (one group) or [G, B, E]. Always in fp32, autocast or not: at tau=1e-4 one bf16 step of
    a cosine near 0.9 is ~40 logits.
    """
    with torch.autocast(query_emb.device.type, enabled=False):
        scores = (query_emb.float() @ passage_emb.float().transpose(-1, -2)) / temperature
        eye = torch.eye(scores.shape[-1], dtype=torch.bool, device=scores.device)
        return scores.masked_fill(eye, float("-inf")).softmax(dim=-1)


def uniform_weights(groups: int, size: int, device: torch.device | None = None) -> torch.Tensor:
    """The `sim: uniform` control: every other chunk weighted 1/(B-1), [G, B, B]."""
    off_diagonal = 1.0 - torch.eye(size, device=device)
    return (off_diagonal / (size - 1)).expand(groups, size, size)


def row_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of Sim: 0 for one-hot, ln(B-1) for uniform over the other chunks."""
    w = weights.detach().float()
    return -(w * torch.log(w.clamp_min(1e-30))).sum(-1)


def as_groups(batch: dict) -> tuple[dict[str, torch.Tensor], bool]:
    """The model's tensors as [G, B, L] (a one-group batch may be [B, L]); also whether it was one bare group."""
    bare = batch["lm_input_ids"].dim() == 2
    return {k: (v.unsqueeze(0) if bare else v) for k, v in batch.items() if k in BATCH_KEYS}, bare


def _same_width(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad the narrower of two [N, L] tensors with zeros (masked positions) so they can be stacked."""
    width = max(a.shape[-1], b.shape[-1])
    return F.pad(a, (0, width - a.shape[-1])), F.pad(b, (0, width - b.shape[-1]))


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
    def __init__(self, retriever: Retriever, lm: nn.Module, lm_tokenizer, temperature: float | None,
                 v_norm: bool | None = None, inbatch_chunk: int | None = None, inbatch_backend: str = "auto",
                 sim: str = "softmax", lm_passes: LMPasses | None = None):
        super().__init__()
        self.retriever = retriever
        self.lm = lm
        self.lm_tokenizer = lm_tokenizer
        self.temperature = temperature
        """None until calibrated (objective.temperature: auto, see revela.train.temperature)."""
        self.sim = sim
        self.v_norm = v_norm
        self.inbatch_chunk = inbatch_chunk
        self.inbatch_backend = inbatch_backend
        self.lm_passes = lm_passes or LMPasses()

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
        if getattr(retriever_backbone.config, "use_cache", False):
            retriever_backbone.config.use_cache = False  # an encoder never decodes: no KV cache alongside the forward
        if rc.gradient_checkpointing:
            enable_layer_checkpointing(retriever_backbone)
        enable_inbatch_attention(lm_model, lc.attn_implementation)
        lm_model.config.use_cache = False
        passes = {True: (2, 3), "pass2": (2,), "pass3": (3,)}.get(lc.gradient_checkpointing, ())
        lm_passes = LMPasses(lc.loss_chunk_tokens, passes)
        lm_passes.prepare(lm_model)
        backbone = apply_finetune(retriever_backbone, rc.finetune, rc.lora, "FEATURE_EXTRACTION")
        for name, p in backbone.named_parameters():
            if ".pooler." in f".{name}":  # the backbone's own pooler head is unused: we pool hidden states
                p.requires_grad_(False)
        obj = cfg.objective
        if obj.sim == "uniform":  # the control: no retriever signal, so nothing of it is trained (or run)
            backbone.requires_grad_(False)
        lm_model = apply_finetune(lm_model, lc.finetune, lc.lora, "CAUSAL_LM")
        for module, checkpointed in ((backbone, rc.gradient_checkpointing), (lm_model, passes)):
            if checkpointed:  # peft re-adds the embeddings hook that only reentrant checkpointing needs
                module.disable_input_require_grads()
        if rc.compile:
            backbone.compile()  # in place: same module and state-dict keys, compiled __call__
        temperature = None if obj.temperature == "auto" else obj.temperature
        return cls(Retriever(backbone, r_tok, protocol), lm_model, l_tok, temperature, obj.v_norm,
                   obj.inbatch_chunk, obj.inbatch_backend, obj.sim, lm_passes)

    def sim_embeddings(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The query-view and passage-view embeddings of each group, [G, B, E] each, from one retriever forward."""
        groups, _ = as_groups(batch)
        G, B = groups["passage_input_ids"].shape[:2]
        query, passage = _same_width(groups["query_input_ids"].flatten(0, 1), groups["passage_input_ids"].flatten(0, 1))
        q_mask, p_mask = _same_width(groups["query_attention_mask"].flatten(0, 1),
                                     groups["passage_attention_mask"].flatten(0, 1))
        emb = self.retriever.embed(torch.cat([query, passage]), torch.cat([q_mask, p_mask])).view(2, G, B, -1)
        return emb[0], emb[1]

    def retriever_similarity(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The retriever's Sim, softmax(cos / tau) over j != i, whatever `sim` says: [B, B] or [G, B, B]."""
        if self.temperature is None:
            raise RuntimeError("model.objective.temperature is 'auto' and has not been calibrated yet "
                               "(revela.train.temperature.setup_temperature runs before the first step)")
        weights = similarity_weights(*self.sim_embeddings(batch), self.temperature)
        return weights[0] if as_groups(batch)[1] else weights

    def similarity(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sim of each group: [B, B] for a [B, L] batch, else [G, B, B]. Both views go through one retriever forward;
        the `sim: uniform` control runs no retriever at all."""
        if self.sim == "uniform":
            groups, bare = as_groups(batch)
            G, B = groups["lm_input_ids"].shape[:2]
            weights = uniform_weights(G, B, groups["lm_input_ids"].device)
            return weights[0] if bare else weights
        return self.retriever_similarity(batch)

    def v_norm_flags(self, batch: dict, groups: int) -> bool | torch.Tensor:
        """V-norm as configured, or (v_norm=None) on for prose and off for code groups: one bool when every group
        agrees, else a [G] tensor. `is_code` is read on the host (the Trainer leaves it there: no device sync)."""
        if self.v_norm is not None:
            return self.v_norm
        is_code = batch.get("is_code")
        if is_code is None:
            return True
        prose = ~torch.as_tensor(is_code).reshape(-1).bool().cpu().expand(groups)
        return bool(prose[0]) if bool((prose == prose[0]).all()) else prose

    def forward(self, batch: dict[str, torch.Tensor], doc_weights: torch.Tensor | None = None,
                measure_pass2: bool = True) -> RevelaOutput:
        """G groups of B chunks: tensors [G, B, L], or [B, L] for one group. `doc_weights` ([G, B, B] or, for one
        group, [B, B]) overrides Sim."""
        groups, _ = as_groups(batch)
        G, B, L = groups["lm_input_ids"].shape
        if B < 2:
            raise ValueError("a group needs at least 2 chunks: in-batch attention has nothing to attend to")
        sim = self.similarity(batch) if doc_weights is None else doc_weights  # returned as given: its grad is Sim's
        weights = sim.reshape(G, B, B)
        v_norm = self.v_norm_flags(batch, G)
        if torch.is_tensor(v_norm):
            v_norm = v_norm.to(weights.device, non_blocking=True)
        ids, mask = groups["lm_input_ids"].flatten(0, 1), groups["lm_attention_mask"].flatten(0, 1)
        captured = InBatchState(capture=True)
        pass2 = self.lm_passes.run(self.lm, ids, mask, G, captured, number=2, with_loss=measure_pass2)
        pass2_loss = pass2.mean() if measure_pass2 else None
        state = captured.attend(weights, mask.bool(), v_norm, self.inbatch_chunk, self.inbatch_backend)
        loss = self.lm_passes.run(self.lm, ids, mask, G, state, number=3).mean()
        return RevelaOutput(loss, sim, pass2_loss)


PAPER_PREFIXES = ("query: ", "passage: ")
"""The prefixes of the authors' training code, used for decoder retrievers that ship no prompts of their own."""


def auto_prefixes(backbone_config, path: str) -> tuple[str, str]:
    """(query, passage) prefixes for "auto": the backbone's own prompts when it ships any, else the paper's for
    decoders and none for encoders (bench/PROTOCOL_NOTES.md: the paper's cost MiniLM nDCG@10)."""
    native = native_protocol(path, backbone_config)
    if native.query_prefix or native.passage_prefix:
        return native.query_prefix, native.passage_prefix
    return PAPER_PREFIXES if is_decoder(backbone_config) else ("", "")


def retriever_protocol(cfg: ModelConfig, backbone_config, path: str) -> EncodingProtocol:
    """The protocol the retriever is trained with: configured length, prefixes and pooling resolved for the
    backbone."""
    rc = cfg.retriever
    pooling = rc.pooling
    if pooling == "auto":
        pooling = "eos" if is_decoder(backbone_config) else native_protocol(path, backbone_config).pooling
    auto = auto_prefixes(backbone_config, path)
    query = auto[0] if rc.query_prefix == "auto" else rc.query_prefix
    passage = auto[1] if rc.passage_prefix == "auto" else rc.passage_prefix
    return EncodingProtocol(pooling=pooling, query_prefix=query, passage_prefix=passage, max_length=rc.max_length)


def retriever_protocol_for(cfg: ModelConfig) -> EncodingProtocol:
    """The training protocol, without loading weights (for tokenizing in data workers)."""
    from transformers import AutoConfig

    from revela.assets import resolve_model

    path = resolve_model(cfg.retriever.name)
    return retriever_protocol(cfg, AutoConfig.from_pretrained(path), path)
