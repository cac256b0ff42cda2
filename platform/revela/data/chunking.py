"""Split documents into chunks: complete sentences for prose, definition blocks for code, both token-capped.

Rules (every chunk satisfies all that apply):
- **Token cap** (`max_tokens`, default 160, the paper's passage length): the chunk's own token count, with
  no prefix and no special tokens, is at most `max_tokens`. With a tokenizer the count is
  `len(tokenizer(text, add_special_tokens=False).input_ids)` and it is checked on the final chunk text.
  Without one, `estimate_tokens` is used: every run of letters counts ceil(len/6), every digit,
  underscore and other non-space character counts 1. On the CPython stdlib this over-counts BERT
  WordPiece by ~8 % on prose and <1 % on code, and SmolLM2's BPE by ~22 % and ~4 %, so estimated caps
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
  packed greedily up to `max_tokens`; an oversized segment is cut at its blank lines, else before its
  least-indented lines (the statements of the outermost body), recursively, and a single line over the
  cap at word boundaries. A chunk is a contiguous slice of the file's lines (except
  for such over-long lines). `max_words` does not apply to code.
- **Too short**: chunks with fewer than `min_words` whitespace-separated words are dropped and counted as
  `short_chunk`; a document that yields no chunk at all (shorter than one sentence of `min_words`) is
  counted once as `too_short` instead.
"""

from __future__ import annotations

import itertools
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
# A line break before an indented line or a list item: code samples, tables and lists in docs are not
# sentences, and joining their lines would make one giant "sentence".
_LINE_BREAK = re.compile(r"\n(?=[ \t]+\S|[-*+\u2022] |\d+[.)] )")


def _ends_with_abbreviation(text: str) -> bool:
    last = text.rsplit(None, 1)[-1].rstrip(".").lstrip("(\"'").lower()
    return last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())


def _split_line_run(text: str) -> list[str]:
    text = " ".join(text.split())
    out: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        candidate = text[start : m.end(1)]
        single_period = m.group(1).rstrip("\"'\u201d\u2019)]") == "."
        if single_period and _ends_with_abbreviation(candidate):
            continue
        out.append(candidate.strip())
        start = m.end()
    tail = text[start:].strip()
    return out + ([tail] if tail else [])


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences. Blank lines always end one, and so does a line break before an indented
    line or a list item. Inside a run of lines, `.`/`!`/`?` (plus closing quotes/brackets) followed by
    whitespace and a non-lowercase character ends a sentence, unless the word before a single `.` is a known
    abbreviation ("e.g.", "Dr.") or a single-letter initial. Whitespace is normalised to single spaces."""
    return [s for para in _PARAGRAPH.split(text) for run in _LINE_BREAK.split(para) for s in _split_line_run(run)]


# ---------------------------------------------------------------- packing


def _words(text: str) -> int:
    return len(text.split())


@dataclass
class _Packer:
    """Greedy in-order packing of units (sentences, line runs, words) under the word and token caps.

    Unit sizes are counted once and summed while packing; with a tokenizer the joined chunk texts are then
    counted exactly in one batch and any chunk over the cap is re-split (the sums can be off by a token or
    two where BPE merges across the joiner, or where the joiner itself is a token, like "\n").
    """

    rules: ChunkRules
    counter: TokenCounter
    use_word_cap: bool
    notes: dict[str, int] = field(default_factory=dict)

    def fits(self, words: int, tokens: int) -> bool:
        return tokens <= self.rules.max_tokens and (not self.use_word_cap or words <= self.rules.max_words)

    def note(self, key: str) -> None:
        self.notes[key] = self.notes.get(key, 0) + 1

    def group(self, units: list[str], tokens: list[int], joiner_tokens: int = 0) -> list[list[int]]:
        groups: list[list[int]] = []
        cur: list[int] = []
        cur_w = cur_t = 0
        for i, u in enumerate(units):
            w, t = _words(u), tokens[i] + (joiner_tokens if cur else 0)
            if cur and not self.fits(cur_w + w, cur_t + t):
                groups.append(cur)
                cur, cur_w, cur_t, t = [], 0, 0, tokens[i]
            cur.append(i)
            cur_w += w
            cur_t += t
        return groups + ([cur] if cur else [])

    def pack(self, units: list[str], joiner: str, tokens: list[int] | None = None) -> list[str]:
        """Pack units that each fit; every returned text is within the caps."""
        if not units:
            return []
        if tokens is None:
            tokens = self.counter.count_many(units)
        joiner_tokens = self.counter.count(joiner) if joiner.strip() == "" and joiner != " " else 0
        groups = self.group(units, tokens, joiner_tokens)
        texts = [joiner.join(units[i] for i in g) for g in groups]
        if self.counter.tokenizer is None:  # the estimate is additive: the sums are exact
            return texts
        out: list[str] = []
        for g, text, n in zip(groups, texts, self.counter.count_many(texts)):
            if n <= self.rules.max_tokens:
                out.append(text)
            elif len(g) == 1:
                out.extend(self.split_words(text))
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
        self.note("long_word_splits")
        out = []
        while word:
            size = len(word)
            while size > 1 and (n := self.counter.count(word[:size])) > self.rules.max_tokens:
                size = max(1, size * self.rules.max_tokens // n - 1)
            out.append(word[:size])
            word = word[size:]
        return out


def chunk_prose(text: str, rules: ChunkRules, counter: TokenCounter, notes: dict[str, int] | None = None) -> list[str]:
    """Prose text -> chunk texts of complete sentences (see module docstring)."""
    packer = _Packer(rules, counter, use_word_cap=True, notes=notes if notes is not None else {})
    sentences = split_sentences(text)
    sizes = counter.count_many(sentences)
    out: list[str] = []
    run: list[str] = []
    run_sizes: list[int] = []
    for s, t in zip(sentences, sizes):
        if not packer.fits(_words(s), t):
            out.extend(packer.pack(run, " ", run_sizes))
            run, run_sizes = [], []
            packer.note("long_sentence_splits")
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


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _code_cuts(lines: list[str], a: int, b: int) -> list[int]:
    """Where to cut the oversized line run [a, b): at its blank lines if it has any inside, else before its
    least-indented lines (the statements of its outermost body), else at every line."""
    cuts = [i for i in range(a + 1, b) if not lines[i - 1].strip() and lines[i].strip()]
    if not cuts:
        levels = [_indent(lines[i]) for i in range(a + 1, b) if lines[i].strip()]
        if levels:
            cuts = [i for i in range(a + 1, b) if lines[i].strip() and _indent(lines[i]) <= min(levels)]
    return cuts or list(range(a + 1, b))


def chunk_code(text: str, rules: ChunkRules, counter: TokenCounter, notes: dict[str, int] | None = None) -> list[str]:
    """Source text -> chunk texts, contiguous line slices cut at top-level definitions (module docstring)."""
    packer = _Packer(rules, counter, use_word_cap=False, notes=notes if notes is not None else {})
    lines = text.splitlines()
    newline = counter.count("\n") if counter.tokenizer is not None else 0
    prefix = [0, *itertools.accumulate(counter.count_many(lines))]

    def cost(a: int, b: int) -> int:
        return prefix[b] - prefix[a] + (b - a - 1) * newline

    def split(a: int, b: int) -> list[tuple[str, int]]:
        if cost(a, b) <= rules.max_tokens:
            return [("\n".join(lines[a:b]), cost(a, b))]
        if b - a == 1:
            words = packer.split_words(lines[a])
            return list(zip(words, counter.count_many(words)))
        bounds = [a, *_code_cuts(lines, a, b), b]
        parts = [p for x, y in zip(bounds, bounds[1:]) for p in split(x, y)]
        groups = packer.group([t for t, _ in parts], [n for _, n in parts], newline)
        return [("\n".join(parts[i][0] for i in g), sum(parts[i][1] for i in g) + (len(g) - 1) * newline)
                for g in groups]

    starts = _segment_starts(lines) + [len(lines)]
    units: list[tuple[str, int]] = []
    for a, b in zip(starts, starts[1:]):
        pieces = split(a, b)
        if len(pieces) > 1:
            packer.note("code_segment_splits")
        units.extend(pieces)
    chunks = packer.pack([t for t, _ in units], "\n", [n for _, n in units])
    return [c.strip("\n") for c in chunks if c.strip()]


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
