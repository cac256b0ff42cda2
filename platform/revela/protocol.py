"""How a retriever turns text into a vector: prefixes, truncation, EOS, pooling, normalisation.

The same protocol is used in training and evaluation, and it travels with every checkpoint and export
(`revela_protocol.json`), so a model is always encoded the way it was trained (method §1.1, §6).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from revela.configbase import StrictModel

PROTOCOL_FILE = "revela_protocol.json"
Kind = Literal["query", "passage"]


class EncodingProtocol(StrictModel):
    pooling: Literal["eos", "cls", "mean"]
    query_prefix: str = ""
    passage_prefix: str = ""
    max_length: int = Field(512, ge=2)
    """Tokens per text, special tokens included (queries, and passages unless passage_max_length is set)."""
    passage_max_length: int | None = Field(None, ge=2)
    """Tokens per passage when it differs from max_length (evaluation encodes passages longer than training)."""
    normalize: bool = True

    @property
    def append_eos(self) -> bool:
        return self.pooling == "eos"

    def prefix(self, kind: Kind) -> str:
        return self.query_prefix if kind == "query" else self.passage_prefix

    def length(self, kind: Kind) -> int:
        if kind == "passage" and self.passage_max_length is not None:
            return self.passage_max_length
        return self.max_length

    def save(self, directory: str | Path) -> None:
        Path(directory, PROTOCOL_FILE).write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "EncodingProtocol | None":
        path = Path(directory, PROTOCOL_FILE)
        return cls.model_validate(json.loads(path.read_text())) if path.is_file() else None


def pad_token_id(tokenizer, pooling: str) -> int:
    """The id used for right padding; decoders without a pad token pad with EOS (as RepLLaMA does)."""
    if pooling == "eos" and tokenizer.eos_token_id is None:
        raise ValueError(
            f"tokenizer {tokenizer.name_or_path!r} has no EOS token, but eos pooling appends one; "
            "use pooling 'mean' or 'cls', or a tokenizer with an eos_token"
        )
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an EOS token to pad with")


def appends_eos(tokenizer) -> bool:
    """Whether the tokenizer adds EOS by itself (exported decoder retrievers do)."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.eos_token_id is not None and bool(ids) and ids[-1] == tokenizer.eos_token_id


def tokenize(
    tokenizer,
    texts: list[str],
    protocol: EncodingProtocol,
    kind: Kind,
    keep_ratio: float = 1.0,
    pad_to: int | None = None,
) -> dict[str, np.ndarray]:
    """Token ids and attention mask, right-padded, for `texts` under `protocol`.

    keep_ratio < 1 builds the "first half" view: the first int(ratio * length) tokens (counting the
    leading special token and the prefix, as the reference code does), then the closing specials/EOS.
    pad_to pads to a fixed length (static shapes for streaming); otherwise to the longest text.
    """
    pad_id = pad_token_id(tokenizer, protocol.pooling)
    eos = [tokenizer.eos_token_id] if protocol.append_eos and not appends_eos(tokenizer) else []
    enc = tokenizer(
        [protocol.prefix(kind) + t for t in texts],
        add_special_tokens=True,
        truncation=True,
        max_length=protocol.length(kind) - len(eos),
        return_special_tokens_mask=True,
    )
    rows = []
    for ids, special in zip(enc["input_ids"], enc["special_tokens_mask"]):
        tail = 0
        while tail < len(ids) and special[len(ids) - 1 - tail]:
            tail += 1
        body, closing = ids[: len(ids) - tail], ids[len(ids) - tail:]
        if keep_ratio < 1.0:
            body = body[: max(1, int(keep_ratio * len(ids)))]
        row = body + closing
        if eos and (not row or row[-1] != eos[0]):
            row = row + eos
        rows.append(row)
    width = pad_to or max(len(r) for r in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for n, row in enumerate(rows):
        row = row[:width]
        input_ids[n, : len(row)] = row
        mask[n, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[N, L, D] hidden states -> [N, D]; padding is on the right."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    last = attention_mask.sum(1).long() - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
