"""Held-out groups: does the LM use the retrieved chunks (pass-3 < pass-2 loss), and does the retriever find
chunks of the same document (top-1 neighbour hit-rate, against chance)?"""

from __future__ import annotations

from collections.abc import Callable

import torch

from revela.batch import GroupTokenizer
from revela.model import RevelaModel


@torch.no_grad()
def heldout_metrics(model: RevelaModel, tokenizer_for: Callable[[str], GroupTokenizer], rows: list[dict]) -> dict:
    """rows: {"texts": [...], "doc_ids": [...], "kind": "prose"|"code"} groups never trained on;
    tokenizer_for(kind) gives the group tokenizer training used for that kind."""
    model.eval()
    pass2, pass3, hits, scored, chance = [], [], 0, 0, 0.0
    for row in rows:
        tokenizer = tokenizer_for(row.get("kind", "prose"))
        batch = {k: torch.from_numpy(v) for k, v in tokenizer(list(row["texts"])).items()}
        batch["is_code"] = torch.tensor(int(row.get("kind") == "code"))
        out = model(batch)
        pass2.append(float(out.pass2_loss))
        pass3.append(float(out.loss))
        docs = list(row["doc_ids"])
        # the retriever's own choice, also under the `sim: uniform` control (which does not use it)
        weights = model.retriever_similarity(batch) if model.sim == "uniform" else out.doc_weights
        top = weights.argmax(-1).tolist()
        for i, j in enumerate(top):
            same = sum(1 for k, d in enumerate(docs) if k != i and d == docs[i])
            if same == 0:  # no chunk of the same document to find: the chunk cannot score a hit
                continue
            scored += 1
            hits += docs[j] == docs[i]
            chance += same / (len(docs) - 1)
    return {
        "groups": len(rows),
        "pass2_loss": sum(pass2) / len(pass2),
        "pass3_loss": sum(pass3) / len(pass3),
        "top1_same_doc": hits / scored if scored else None,
        "top1_chance": chance / scored if scored else None,
        "chunks_scored": scored,
    }
