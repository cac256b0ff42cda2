"""The retriever E: any HF backbone plus the encoding protocol it was trained (or shipped) with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from revela.assets import resolve_model
from revela.protocol import EncodingProtocol, Kind, pool, tokenize

CHECKPOINT_MARKER = "revela_checkpoint.json"
DECODER_TYPES = {"llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "mistral", "phi3", "gpt2"}


def is_decoder(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith("ForCausalLM") for a in archs) or config.model_type in DECODER_TYPES


def sentence_transformers_pooling(path: str | Path) -> str | None:
    """The pooling a sentence-transformers folder declares (its `1_Pooling/config.json`), if any."""
    modules = Path(path, "modules.json")
    pooling_dirs = ["1_Pooling"]
    if modules.is_file():
        pooling_dirs = [m["path"] for m in json.loads(modules.read_text()) if m.get("type", "").endswith("Pooling")]
    for d in pooling_dirs:
        cfg = Path(path, d, "config.json")
        if cfg.is_file():
            c = json.loads(cfg.read_text())
            for key, name in (("pooling_mode_lasttoken", "eos"), ("pooling_mode_cls_token", "cls"),
                              ("pooling_mode_mean_tokens", "mean")):
                if c.get(key):
                    return name
    return None


def native_protocol(path: str, config) -> EncodingProtocol:
    """How a plain backbone encodes by itself: its sentence-transformers config, no prefixes unless it ships prompts."""
    saved = EncodingProtocol.load(path) if Path(path).is_dir() else None
    if saved is not None:
        return saved
    pooling = "eos" if is_decoder(config) else (sentence_transformers_pooling(path) or "mean")
    max_length, prompts = 512, {}
    st = Path(path, "sentence_bert_config.json")
    if st.is_file():
        max_length = json.loads(st.read_text()).get("max_seq_length", max_length)
    st_cfg = Path(path, "config_sentence_transformers.json")
    if st_cfg.is_file():
        prompts = json.loads(st_cfg.read_text()).get("prompts") or {}
    return EncodingProtocol(pooling=pooling, max_length=max_length, query_prefix=prompts.get("query", ""),
                            passage_prefix=prompts.get("document", prompts.get("passage", "")))


class Retriever(nn.Module):
    def __init__(self, backbone: nn.Module, tokenizer, protocol: EncodingProtocol):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.protocol = protocol

    @classmethod
    def load(cls, name_or_path: str, protocol: EncodingProtocol | None = None, dtype=None) -> "Retriever":
        """A plain backbone (asset alias, path, hub id), a training checkpoint, or an exported folder."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = resolve_model(name_or_path)
        if Path(path, CHECKPOINT_MARKER).is_file():
            path = str(Path(path, "retriever"))
        adapter = Path(path, "adapter_config.json")
        if adapter.is_file():
            return cls._load_lora(path, protocol, dtype)
        config = AutoConfig.from_pretrained(path)
        backbone = AutoModel.from_pretrained(path, dtype=dtype) if dtype else AutoModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(backbone, tokenizer, protocol or native_protocol(path, config))

    @classmethod
    def _load_lora(cls, path: str, protocol: EncodingProtocol | None, dtype) -> "Retriever":
        from peft import PeftModel
        from transformers import AutoModel, AutoTokenizer

        base_name = json.loads(Path(path, "adapter_config.json").read_text())["base_model_name_or_path"]
        base = AutoModel.from_pretrained(resolve_model(base_name), **({"dtype": dtype} if dtype else {}))
        backbone = PeftModel.from_pretrained(base, path).merge_and_unload()
        saved = EncodingProtocol.load(path)
        if protocol is None and saved is None:
            raise ValueError(f"{path} has LoRA adapters but no {Path(path).name}/revela_protocol.json")
        return cls(backbone, AutoTokenizer.from_pretrained(path), protocol or saved)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def tokenize(self, texts: list[str], kind: Kind, keep_ratio: float = 1.0) -> dict[str, torch.Tensor]:
        enc = tokenize(self.tokenizer, texts, self.protocol, kind, keep_ratio)
        return {k: torch.from_numpy(v) for k, v in enc.items()}

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[N, L] ids -> [N, D] embeddings (L2-normalised when the protocol says so)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        emb = pool(hidden, attention_mask, self.protocol.pooling)
        return F.normalize(emb.float(), dim=-1) if self.protocol.normalize else emb.float()

    @torch.inference_mode()
    def encode(self, texts: list[str], kind: Kind, batch_size: int = 32) -> np.ndarray:
        """Embeddings of `texts` as float32 [N, D]; texts are length-sorted into batches for speed."""
        self.backbone.eval()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), 0), dtype=np.float32)
        chunks = []
        for start in range(0, len(texts), batch_size):
            idx = order[start: start + batch_size]
            enc = self.tokenize([texts[i] for i in idx], kind)
            emb = self.embed(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
            chunks.append(emb.cpu().numpy())
        if chunks:
            out = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
            out[order] = np.concatenate(chunks)
        return out
