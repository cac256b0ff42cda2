"""Split documents into chunks: complete sentences for prose, definition blocks for code, both token-capped.

Rules (every chunk satisfies all that apply):
- **Token cap** (`max_tokens`, default 160, the paper's passage length): the chunk's own token count, with
  no prefix and no special tokens, is at most `max_tokens`. With a tokenizer the count is
  `len(tokenizer(text, add_special_tokens=False).input_ids)` and it is checked on the final chunk text.
  Without one, `estimate_tokens` is used: every run of letters counts ceil(len/6), every digit,
  underscore and other non-space character counts 1. On the CPython stdlib this over-counts BERT
  WordPiece by ~8 % on prose and ~1 % on code, and SmolLM2's BPE by ~20 % and ~4 %, so estimated caps
  rarely overflow the real tokenizer, but only a tokenizer makes the cap exact.
  The model side still truncates at its own max length, which also holds the "query: "/"passage: "
  prefix and EOS; pick `max_tokens` a few tokens below it if no truncation at all is wanted.
- **Prose** (paper: NLTK sentence split, complete sentences, <= 120 words): sentences come from
  `split_sentences` (a regex splitter; NLTK punkt data is not available offline) and are packed greedily,
  in order, while the chunk stays within `max_words` words and `max_tokens` tokens. A single sentence over
  either cap is cut at word boundaries (counted as `long_sentence_splits`), a single word over the token
  cap into character slices.
- **Code**: lines are cut into segments at top-level definitions (`def`, `class`, decorators, and any
  non-indented line that follows a blank line, so blank-line blocks of any language count). Segments are
  packed greedily up to `max_tokens`; an oversized segment is cut at its blank lines, then at lines, and a
  single line over the cap at word boundaries. A chunk is a contiguous slice of the file's lines (except
  for such over-long lines). `max_words` does not apply to code.
- **Too short**: chunks with fewer than `min_words` whitespace-separated words are dropped and counted as
  `short_chunk`; a document that yields no chunk at all (shorter than one sentence of `min_words`) is
  counted once as `too_short` instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from revela.data.ingest import Document, Kind, SkipCounter

_PIECE = re.compile(r"[^\W\d_]+|\S")


def estimate_tokens(text: str) -> int:
    """Words-based token estimate used when no tokenizer is given (rule in the module docstring)."""
    return sum(math.ceil(len(p) / 6) if p[0].isalpha() else 1 for p in _PIECE.findall(text))


class TokenCounter:
    """Counts tokens of chunk texts, with a tokenizer (exact) or `estimate_tokens`."""

    def __init__(self, tokenizer: Any | None = None, name: str | None = None):
        self.tokenizer = tokenizer
        if tokenizer is None:
            self.name = "estimate"
        else:
            self.name = name or getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__

    def count_many(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        if self.tokenizer is None:
            return [estimate_tokens(t) for t in texts]
        enc = self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                             return_token_type_ids=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    def count(self, text: str) -> int:
        return self.count_many([text])[0]


@dataclass(frozen=True)
class ChunkRules:
    max_words: int = 120
    max_tokens: int = 160
    min_words: int = 4


@dataclass(frozen=True)
class Chunk:
    text: str
    doc_id: str
    source: str
    kind: Kind
    index: int
    """Position within its document."""

    @property
    def id(self) -> str:
        return f"{self.doc_id}::{self.index}"


# ---------------------------------------------------------------- sentences

_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs cf al approx mr mrs ms dr prof sr jr st no nos fig figs eq eqs sec ch vol pp ed eds "
    "inc ltd co corp dept est jan feb mar apr jun jul aug sep sept oct nov dec a.m p.m u.s u.k".split()
)
# End punctuation, optional closing quotes/brackets, whitespace, then something that is not a lowercase letter.
_BOUNDARY = re.compile(r"([.!?]+[\"'\u201d\u2019)\]]*)\s+(?=[^a-z\s])")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")


def _ends_with_abbreviation(text: str) -> bool:
    last = text.rsplit(None, 1)[-1].rstrip(".").lstrip("(\"'").lower()
    return last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences: blank lines always end one; inside a paragraph, `.`/`!`/`?` (plus
    closing quotes/brackets) followed by whitespace and a non-lowercase character, unless the word before
    is a known abbreviation ("e.g.", "Dr.") or a single-letter initial. Whitespace is normalised."""
    sentences: list[str] = []
    for para in _PARAGRAPH.split(text):
        para = " ".join(para.split())
        if not para:
            continue
        start = 0
        for m in _BOUNDARY.finditer(para):
            candidate = para[start : m.end(1)]
            if m.group(1).startswith(".") and len(m.group(1).rstrip("\"'\u201d\u2019)]")) == 1 \
                    and _ends_with_abbreviation(candidate):
                continue
            sentences.append(candidate.strip())
            start = m.end()
        tail = para[start:].strip()
        if tail:
            sentences.append(tail)
    return sentences


# ---------------------------------------------------------------- packing


def _words(text: str) -> int:
    return len(text.split())


@dataclass
class _Packer:
    """Greedy in-order packing of units (sentences or line ranges) under the word and token caps."""

    rules: ChunkRules
    counter: TokenCounter
    use_word_cap: bool
    notes: dict[str, int] = field(default_factory=dict)

    def fits(self, words: int, tokens: int) -> bool:
        return tokens <= self.rules.max_tokens and (not self.use_word_cap or words <= self.rules.max_words)

    def pack(self, units: list[str], joiner: str, tokens: list[int] | None = None) -> list[str]:
        """Pack units whose own sizes already fit; check the joined text exactly and re-split offenders."""
        if tokens is None:
            tokens = self.counter.count_many(units)
        groups: list[list[int]] = []
        cur: list[int] = []
        cur_w = cur_t = 0
        for i, u in enumerate(units):
            w, t = _words(u), tokens[i]
            if cur and not self.fits(cur_w + w, cur_t + t):
                groups.append(cur)
                cur, cur_w, cur_t = [], 0, 0
            cur.append(i)
            cur_w += w
            cur_t += t
        if cur:
            groups.append(cur)
        texts = [joiner.join(units[i] for i in g) for g in groups]
        # Sums of per-unit counts can differ from the joined text's count by a token or two (BPE merges
        # across the joiner), so the final text is what gets checked.
        exact = self.counter.count_many(texts) if self.counter.tokenizer is not None else None
        out: list[str] = []
        for g, text, n in zip(groups, texts, exact or [None] * len(texts)):
            if n is None or n <= self.rules.max_tokens or len(g) == 1:
                out.append(text)
            else:
                half = len(g) // 2
                out.extend(self.pack([units[i] for i in g[:half]], joiner))
                out.extend(self.pack([units[i] for i in g[half:]], joiner))
        return out

    def split_words(self, text: str) -> list[str]:
        """Cut one oversized unit at word boundaries (a single oversized word into character slices)."""
        pieces: list[str] = []
        words = text.split()
        for word, n in zip(words, self.counter.count_many(words)):
            pieces.extend(self._split_chars(word) if n > self.rules.max_tokens else [word])
        return self.pack(pieces, " ")

    def _split_chars(self, word: str) -> list[str]:
        self.notes["long_word_splits"] = self.notes.get("long_word_splits", 0) + 1
        out = []
        while word:
            size = len(word)
            while size > 1 and self.counter.count(word[:size]) > self.rules.max_tokens:
                size = max(1, size * self.rules.max_tokens // max(self.counter.count(word[:size]), 1) - 1)
            out.append(word[:size])
            word = word[size:]
        return out

    def oversized(self, text: str, tokens: int) -> bool:
        return not self.fits(_words(text), tokens)


def chunk_prose(text: str, rules: ChunkRules, counter: TokenCounter, notes: dict[str, int] | None = None) -> list[str]:
    """Prose text -> chunk texts of complete sentences (see module docstring)."""
    packer = _Packer(rules, counter, use_word_cap=True, notes=notes if notes is not None else {})
    sentences = split_sentences(text)
    sizes = counter.count_many(sentences)
    out: list[str] = []
    run: list[str] = []
    run_sizes: list[int] = []
    for s, t in zip(sentences, sizes):
        if packer.oversized(s, t):
            out.extend(packer.pack(run, " ", run_sizes))
            run, run_sizes = [], []
            packer.notes["long_sentence_splits"] = packer.notes.get("long_sentence_splits", 0) + 1
            out.extend(packer.split_words(s))
        else:
            run.append(s)
            run_sizes.append(t)
    out.extend(packer.pack(run, " ", run_sizes))
    return out


_TOP_LEVEL_DEF = re.compile(r"(async\s+def|def|class)\b|@")


def _segment_starts(lines: list[str]) -> list[int]:
    """Line indices where a top-level segment starts (leading comments/decorators stay with their def)."""
    starts = [0]
    for i in range(1, len(lines)):
        line = lines[i]
        if not line.strip() or line[0].isspace():
            continue  # only non-indented lines start segments
        prev = lines[i - 1]
        attached = prev.startswith("@") or prev.startswith("#")
        if not prev.strip() or (_TOP_LEVEL_DEF.match(line) and not attached):
            starts.append(i)
    return starts


def _blocks(lines: list[str]) -> list[str]:
    """Cut lines into blocks that end at blank lines (the blank lines stay with the block before)."""
    blocks, cur = [], []
    for line in lines:
        cur.append(line)
        if not line.strip():
            blocks.append("\n".join(cur))
            cur = []
    if cur:
        blocks.append("\n".join(cur))
    return blocks


def chunk_code(text: str, rules: ChunkRules, counter: TokenCounter, notes: dict[str, int] | None = None) -> list[str]:
    """Source text -> chunk texts, contiguous line slices cut at top-level definitions (module docstring)."""
    packer = _Packer(rules, counter, use_word_cap=False, notes=notes if notes is not None else {})
    lines = text.splitlines()
    starts = _segment_starts(lines) + [len(lines)]
    segments = ["\n".join(lines[a:b]) for a, b in zip(starts, starts[1:]) if a < b]
    units: list[str] = []
    for seg, n in zip(segments, counter.count_many(segments)):
        if n <= rules.max_tokens:
            units.append(seg)
            continue
        packer.notes["code_segment_splits"] = packer.notes.get("code_segment_splits", 0) + 1
        for block in packer.pack(_blocks(seg.split("\n")), "\n"):
            if counter.count(block) <= rules.max_tokens:
                units.append(block)
                continue
            for line in packer.pack(block.split("\n"), "\n"):
                units.extend([line] if counter.count(line) <= rules.max_tokens else packer.split_words(line))
    return [c.strip("\n") for c in packer.pack(units, "\n") if c.strip()]


# ---------------------------------------------------------------- documents -> chunks


@dataclass
class Chunker:
    """Turns documents into `Chunk`s, counting skips (short_chunk, too_short) and split notes."""

    rules: ChunkRules = ChunkRules()
    counter: TokenCounter = field(default_factory=TokenCounter)
    skips: SkipCounter = field(default_factory=SkipCounter)
    notes: dict[str, int] = field(default_factory=dict)

    def split(self, doc: Document) -> list[Chunk]:
        split: Callable[..., list[str]] = chunk_code if doc.kind == "code" else chunk_prose
        texts = split(doc.text, self.rules, self.counter, self.notes)
        kept = [t for t in texts if _words(t) >= self.rules.min_words]
        if not kept:
            self.skips.add("too_short", doc.where or doc.id)
            return []
        for _ in range(len(texts) - len(kept)):
            self.skips.add("short_chunk", doc.where or doc.id)
        return [Chunk(text=t, doc_id=doc.id, source=doc.source, kind=doc.kind, index=i) for i, t in enumerate(kept)]

    def chunk_all(self, docs: Iterable[Document]) -> Iterator[Chunk]:
        for doc in docs:
            yield from self.split(doc)
