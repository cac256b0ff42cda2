"""One group of B chunk texts -> the fixed-shape tensors a Revela training step consumes."""

from __future__ import annotations

import numpy as np

from revela.protocol import EncodingProtocol, pad_token_id, tokenize


class GroupTokenizer:
    """Builds, for one group, the retriever's query and passage views and the LM's input.

    query view: the first `first_half_ratio` of each chunk when `first_half` (prose), else the full chunk;
    passage view: the full chunk; LM input: the full chunk, no EOS (the LM predicts every token).
    All arrays are right-padded to fixed lengths so streamed batches have static shapes.
    """

    def __init__(self, retriever_tokenizer, lm_tokenizer, protocol: EncodingProtocol, lm_max_length: int,
                 first_half: bool, first_half_ratio: float = 0.5):
        self.retriever_tokenizer = retriever_tokenizer
        self.lm_tokenizer = lm_tokenizer
        self.protocol = protocol
        self.lm_max_length = lm_max_length
        self.query_keep = first_half_ratio if first_half else 1.0
        self.lm_pad_id = pad_token_id(lm_tokenizer, "mean")

    @classmethod
    def from_names(cls, retriever_name: str, lm_name: str, protocol: EncodingProtocol, lm_max_length: int,
                   first_half: bool, first_half_ratio: float = 0.5) -> "GroupTokenizer":
        from transformers import AutoTokenizer

        from revela.assets import resolve_model

        return cls(AutoTokenizer.from_pretrained(resolve_model(retriever_name)),
                   AutoTokenizer.from_pretrained(resolve_model(lm_name)),
                   protocol, lm_max_length, first_half, first_half_ratio)

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        if len(texts) < 2:
            raise ValueError(f"a group needs at least 2 chunks for in-batch attention, got {len(texts)}")
        empty = [n for n, t in enumerate(texts) if not t or not t.strip()]
        if empty:
            raise ValueError(f"empty chunk text at positions {empty} of the group")
        query = tokenize(self.retriever_tokenizer, texts, self.protocol, "query", self.query_keep,
                         pad_to=self.protocol.length("query"))
        passage = tokenize(self.retriever_tokenizer, texts, self.protocol, "passage",
                           pad_to=self.protocol.length("passage"))
        lm = self.lm_tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=self.lm_max_length)
        lm_ids = np.full((len(texts), self.lm_max_length), self.lm_pad_id, dtype=np.int64)
        lm_mask = np.zeros_like(lm_ids)
        for n, ids in enumerate(lm["input_ids"]):
            lm_ids[n, : len(ids)] = ids
            lm_mask[n, : len(ids)] = 1
        return {
            "query_input_ids": query["input_ids"], "query_attention_mask": query["attention_mask"],
            "passage_input_ids": passage["input_ids"], "passage_attention_mask": passage["attention_mask"],
            "lm_input_ids": lm_ids, "lm_attention_mask": lm_mask,
        }
