"""Controls that every report carries: BM25 and the untrained backbone, on the same data and metrics.

BM25 is bm25s (default Lucene-style BM25, k1=1.5, b=0.75) over bm25s' tokenizer with the English Snowball
stemmer (PyStemmer) and English stopwords; documents are `title + " " + text` as for dense models. On code,
identifiers are split first (`foo_barBaz` -> `foo bar Baz`), the variant of the stdlib-code reference baseline
(docs/offline-assets.md, Evaluation sets: 0.458 nDCG@10 vs 0.333 without; reproduced in bench/EVAL_NOTES.md).

The untrained backbone goes through exactly the dense path of `revela.evaluation.run`, twice: under the model's
protocol (the control for the effect of training) and under its own (what a user gets untrained); see
`evaluate(..., baseline_model=...)` and docs/evaluation-protocol.md.
"""

from __future__ import annotations

import re

import numpy as np

_CAMEL = re.compile(r"([a-z])([A-Z])")


def split_identifiers(text: str) -> str:
    """`foo_barBaz` -> `foo bar Baz`: underscores become spaces and a lower-to-upper case change splits a word."""
    return _CAMEL.sub(r"\1 \2", text.replace("_", " "))


def bm25_search(doc_texts: list[str], query_texts: list[str], k: int = 100, ident_split: bool = False,
                k1: float = 1.5, b: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k'], doc indices [Q, k']) best first, k' = min(k, number of docs)."""
    import bm25s
    import Stemmer

    if not doc_texts:
        raise ValueError("BM25 needs at least one document")
    stemmer = Stemmer.Stemmer("english")
    prep = split_identifiers if ident_split else (lambda t: t)
    corpus_tokens = bm25s.tokenize([prep(t) for t in doc_texts], stopwords="en", stemmer=stemmer, show_progress=False)
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(corpus_tokens, show_progress=False)
    query_tokens = bm25s.tokenize([prep(t) for t in query_texts], stopwords="en", stemmer=stemmer,
                                  show_progress=False)
    indices, scores = retriever.retrieve(query_tokens, k=min(k, len(doc_texts)), show_progress=False, n_threads=1)
    return np.asarray(scores, dtype=np.float32), np.asarray(indices, dtype=np.int64)


def bm25_run(dataset, k: int = 100, ident_split: bool = False) -> dict[str, dict[str, float]]:
    """A pytrec_eval run of BM25 over a `BeirDataset`."""
    from revela.evaluation.search import to_run

    scores, indices = bm25_search(dataset.doc_texts(), dataset.query_texts(), k=k, ident_split=ident_split)
    return to_run(dataset.query_ids, dataset.doc_ids, scores, indices)
