"""A retrieval set built from the user's own corpus: `revela build-evals --from-corpus SRC --out DIR`.

It reads the inputs `revela prepare` reads, through the same reader (revela.data.ingest: JSONL, Parquet, text
and code trees, saved HF datasets) and the same kind detection, and pairs text that already belongs together:

- Code (Python): CodeSearchNet's protocol, shared with the stdlib-code suite set
  (revela.evaluation.codesearchnet). Every function, method and class is a passage, without its docstring (a
  class as its outline); the first paragraph of a docstring is the query of its definition. Other languages are
  counted as `code_not_python`.
- Prose: every section is a passage, without its heading; a heading (Markdown, reStructuredText, man page) or an
  FAQ-style question line is the query of the section below it (revela.evaluation.prose_sections).

Rules, applied in this order and counted by reason in the manifest and the printed summary:
1. Passages: a code passage needs 2+ lines (`too_small`: e.g. a stub whose body was its docstring), a prose one
   MIN_PASSAGE_WORDS words (`short_passage`); their queries are dropped for the same reason. Identical passages
   are kept once (`duplicate_passage`); a query of a later copy is judged on the first.
2. Queries: boilerplate such as "Returns None", "TODO", "Initialize self", ":param x:", "See also", "Changelog",
   "Version 2.1", "Fixes since v2.8.3" (`boilerplate`), fewer than MIN_QUERY_WORDS words with a letter
   (`too_short`), more than MAX_QUERY_WORDS words (`too_long`), or text that remains verbatim in its passage,
   compared as lower-cased word sequences (`verbatim_in_passage`), are dropped.
3. Duplicate queries (the same words, case-insensitively): the first in corpus order (sources as given, files
   in sorted order, definitions/sections in source order) is kept with its one relevant passage; the others are
   dropped (`duplicate_query`) and their passages stay in the corpus as unjudged distractors.
4. Hold-out (`holdout` > 0): that fraction of the documents with a query (seeded) is held out; only their
   queries are kept, and `revela prepare --exclude-eval DIR` leaves these documents out of training. A query
   whose words are also a docstring or heading in a document left in training is dropped too
   (`in_training_documents`, with the queries of every document left in training).
5. At most `max_queries` queries are kept (a seeded sample, in corpus order; `beyond_max_queries`).

Every kept passage is in the corpus, including those of documents left in training and those without a query.
The same sources, settings and seed give the same bytes.
"""

from __future__ import annotations

import random
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from revela.data.holdout import HOLDOUT_KEY, holdout_record
from revela.data.ingest import (CODE_EXTENSIONS, Document, KindChoice, OnBad, SkipCounter, fingerprint_source,
                                iter_documents, resolve_sources)
from revela.evaluation.beir import DatasetError, write_beir
from revela.evaluation.codesearchnet import first_paragraph, python_definitions
from revela.evaluation.prose_sections import sections

CORPUS_BUILDER_VERSION = 1
MIN_QUERY_WORDS = 3
MAX_QUERY_WORDS = 64
MIN_PASSAGE_WORDS = 10
MIN_CODE_LINES = 2
PYTHON_EXTENSIONS = frozenset({".py", ".pyi"})

_BOILERPLATE_EXACT = {
    # code
    "initialize self", "initialise self", "initialize self see help type self for accurate signature",
    "initialize the object", "initialize the instance", "initialize the class", "constructor", "initializer",
    "create a new instance", "return str self", "return repr self", "return a string representation",
    "docstring", "no docstring", "undocumented", "not implemented", "not implemented yet", "helper function",
    "for internal use only", "internal use only", "abstract method", "see base class", "see parent class",
    "see superclass", "see above", "see below", "placeholder", "dummy function", "dummy method",
    # prose
    "table of contents", "see also", "further reading", "frequently asked questions", "release notes",
    "reporting bugs", "exit status", "getting started", "quick start", "license", "changelog", "change log",
    "acknowledgements", "acknowledgments", "unreleased", "returns none", "return none", "init", "noop", "no op",
    "helper", "internal", "private", "getter", "setter", "overview", "introduction", "contents", "index", "history",
    "changes", "credits", "authors", "author", "contributors", "contributing", "installation", "usage", "examples",
    "example", "notes", "references", "summary", "description", "synopsis", "name", "options", "bugs", "files",
    "environment", "copyright", "features", "requirements", "faq", "appendix",
}
_BOILERPLATE_START = re.compile(
    r"^(?:todo|fixme|xxx|tbd|noqa|deprecated|stub|placeholder"
    r"|returns? (?:none|true|false|self|nothing)$"
    r"|(?:see|cf) (?:the )?(?:docs?|documentation|above|below|base class|parent|superclass)\b"
    r"|(?:version|release|released|changes in|what s new in|new in version|changed in version) v?\d"
    r"|(?:fixes|updates|changes|bug fixes|improvements) (?:since|in|for) (?:v|version )?\d)")
# release-note headings: a dotted x.y.z version or a date anywhere ("2017-12-05, Version 6.12.1")
_RELEASE = re.compile(r"\bv?\d+ \d+ \d+\b|\b(?:version|release) v?\d|\b\d{4} \d{1,2} \d{1,2}\b")
# a docstring that opens with a field or section instead of a summary: ":param x:", "@return", ".. note::", "Args:"
_SECTION_START = re.compile(r"^\s*(?::[a-z]+|@[a-z]+|\.\. |(?:param|parameters?|args?|arguments?|returns?|rtype|"
                            r"raises?|yields?|examples?|usage|notes?|warning|attributes|keyword arguments?)\s*:)",
                            re.IGNORECASE)


class CorpusEvalError(DatasetError):
    """Sources that give no usable query; the message says what was skipped."""


@dataclass
class _Passage:
    id: str
    doc_index: int
    text: str
    query: str | None
    kind: str
    skip: str | None = None
    """Why the passage is left out (too small), if it is."""


@dataclass
class CorpusEval:
    corpus: dict[str, tuple[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    domain: str
    counts: dict
    skips: dict
    holdout: dict


def words(text: str) -> list[str]:
    """Lower-cased word tokens, what the verbatim and duplicate checks compare."""
    return re.findall(r"\w+", text.lower())


def verbatim_in(query: str, passage: str) -> bool:
    q = " ".join(words(query))
    return bool(q) and f" {q} " in f" {' '.join(words(passage))} "


def query_problem(query: str) -> str | None:
    """The drop reason of a candidate query (rule 2, without the verbatim check), or None."""
    norm = " ".join(words(query))
    if (norm in _BOILERPLATE_EXACT or _BOILERPLATE_START.match(norm) or _RELEASE.search(norm)
            or _SECTION_START.match(query)):
        return "boilerplate"
    if sum(1 for w in query.split() if re.search(r"[^\W\d_]", w)) < MIN_QUERY_WORDS:
        return "too_short"
    if len(query.split()) > MAX_QUERY_WORDS:
        return "too_long"
    return None


def _is_python(doc: Document) -> bool:
    suffix = Path(doc.id.split("#", 1)[0]).suffix.lower()
    return suffix in PYTHON_EXTENSIONS or suffix not in CODE_EXTENSIONS


def _code_passages(doc: Document, index: int, doc_skips: SkipCounter):
    if not _is_python(doc):
        doc_skips.add("code_not_python", doc.where or doc.id)
        return
    try:
        definitions = list(python_definitions(doc.text, classes=True))
    except (SyntaxError, ValueError) as e:
        doc_skips.add("python_syntax_error", f"{doc.where or doc.id}:{getattr(e, 'lineno', '?')}")
        return
    for d in sorted(definitions, key=lambda d: d.line):
        small = sum(1 for line in d.code.splitlines() if line.strip()) < MIN_CODE_LINES
        yield _Passage(f"{doc.id}:{d.line}", index, d.code, first_paragraph(d.docstring) if d.docstring else None,
                       "code", "too_small" if small else None)


def _prose_passages(doc: Document, index: int):
    for s in sections(doc.text):
        body = s.body.strip()
        small = len(body.split()) < MIN_PASSAGE_WORDS
        yield _Passage(f"{doc.id}:{s.line}", index, body, s.heading or None, "prose",
                       "short_passage" if small else None)


def _read(sources: list[str | Path], kind: KindChoice, on_bad_record: OnBad, exclude: list[Path],
          progress: bool):
    from tqdm import tqdm

    srcs = resolve_sources(sources, exclude=exclude)
    doc_skips = SkipCounter()
    documents: list[Document] = []
    passages: list[_Passage] = []
    with tqdm(desc="read+extract", unit="doc", disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        for src in srcs:
            for doc in iter_documents(src, doc_skips, kind, on_bad_record):
                index = len(documents)
                documents.append(doc)
                if doc.kind == "code":
                    passages.extend(_code_passages(doc, index, doc_skips))
                else:
                    passages.extend(_prose_passages(doc, index))
                bar.update(1)
    return documents, passages, doc_skips


def corpus_pairs(sources: list[str | Path], *, kind: KindChoice = "auto", max_queries: int | None = 1000,
                 seed: int = 0, holdout: float = 0.0, on_bad_record: OnBad = "error",
                 exclude: list[Path] = (), progress: bool = False) -> CorpusEval:
    """The set without writing anything (rules in the module docstring)."""
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"--holdout must be in [0, 1): the fraction of documents kept out of training, "
                         f"got {holdout}")
    if max_queries is not None and max_queries < 1:
        raise ValueError(f"--max-queries must be at least 1, got {max_queries}")
    documents, passages, doc_skips = _read(sources, kind, on_bad_record, list(exclude), progress)
    passage_skips, dropped = SkipCounter(), SkipCounter()

    # 1. passages too small, then identical passages once; a later copy's query is judged on the first
    corpus: dict[str, _Passage] = {}
    first_with_text: dict[str, str] = {}
    candidates: list[tuple[str, str]] = []  # (query, id of the passage it is judged on)
    written_in: dict[str, set[int]] = {}  # query words -> documents whose text holds them (for the hold-out)
    for p in passages:
        if p.query is not None:
            written_in.setdefault(" ".join(words(p.query)), set()).add(p.doc_index)
        if p.skip:
            passage_skips.add(p.skip, p.id)
            if p.query is not None:
                dropped.add(p.skip, p.id)
            continue
        kept = first_with_text.setdefault(p.text, p.id)
        if kept == p.id:
            corpus[p.id] = p
        else:
            passage_skips.add("duplicate_passage", p.id)
        if p.query is not None:
            candidates.append((p.query, kept))
    # 2. query filters, 3. duplicates
    seen: set[str] = set()
    pairs: list[tuple[str, str, int]] = []  # (query, passage id, the passage's document)
    for query, pid in candidates:
        reason = query_problem(query) or ("verbatim_in_passage" if verbatim_in(query, corpus[pid].text) else None)
        if reason:
            dropped.add(reason, pid)
            continue
        key = " ".join(words(query))
        if key in seen:
            dropped.add("duplicate_query", pid)
            continue
        seen.add(key)
        pairs.append((query, pid, corpus[pid].doc_index))
    # 4. hold-out
    with_queries = sorted({doc for _, _, doc in pairs})
    held: list[int] = []
    if holdout > 0 and with_queries:
        n = max(1, round(holdout * len(with_queries)))
        held = sorted(random.Random(f"holdout:{seed}").sample(with_queries, n))
        held_set = set(held)
        kept_pairs = []
        for query, pid, doc in pairs:
            if doc in held_set and written_in[" ".join(words(query))] <= held_set:
                kept_pairs.append((query, pid, doc))
            else:
                dropped.add("in_training_documents", pid)
        pairs = kept_pairs
    # 5. sample
    if max_queries is not None and len(pairs) > max_queries:
        keep = set(random.Random(f"queries:{seed}").sample(range(len(pairs)), max_queries))
        for i, (_, pid, _) in enumerate(pairs):
            if i not in keep:
                dropped.add("beyond_max_queries", pid)
        pairs = [pair for i, pair in enumerate(pairs) if i in keep]

    queries = {f"q{i}": query for i, (query, _, _) in enumerate(pairs)}
    qrels = {f"q{i}": {pid: 1} for i, (_, pid, _) in enumerate(pairs)}
    by_kind = Counter(corpus[pid].kind for _, pid, _ in pairs)
    counts = {
        "docs": len(corpus), "queries": len(queries), "qrels": len(qrels),
        "documents": len(documents), "documents_with_queries": len(with_queries), "documents_held_out": len(held),
        "passages_by_kind": dict(sorted(Counter(p.kind for p in corpus.values()).items())),
        "queries_by_kind": dict(sorted(by_kind.items())),
        "candidate_queries": len(candidates),
        "dropped_queries": dict(sorted(dropped.counts.items())),
    }
    domain = "code" if by_kind.get("code", 0) >= by_kind.get("prose", 0) and by_kind.get("code") else "text"
    return CorpusEval(
        corpus={pid: ("", p.text) for pid, p in corpus.items()}, queries=queries, qrels=qrels, domain=domain,
        counts=counts,
        skips={"documents": doc_skips.as_dict(), "passages": passage_skips.as_dict(), "queries": dropped.as_dict()},
        holdout=holdout_record(holdout, seed, [documents[i] for i in held]))


def build_corpus_eval(sources: list[str | Path], out: str | Path, *, kind: KindChoice = "auto",
                      max_queries: int | None = 1000, seed: int = 0, holdout: float = 0.0,
                      on_bad_record: OnBad = "error", force: bool = False, progress: bool = False) -> Path:
    """Write the set to `out` (BEIR layout + revela_dataset.json), unless an identical build is there."""
    from revela.evaluation.suite import build_dataset_dir

    out = Path(out)
    srcs = resolve_sources(sources, exclude=[out])
    source = {"sources": [fingerprint_source(s) for s in srcs]}
    params = {"builder": "corpus", "corpus_builder_version": CORPUS_BUILDER_VERSION, "kind": kind,
              "max_queries": max_queries, "seed": seed, "holdout": holdout, "on_bad_record": on_bad_record}

    def make(staging: Path):
        built = corpus_pairs(sources, kind=kind, max_queries=max_queries, seed=seed, holdout=holdout,
                             on_bad_record=on_bad_record, exclude=[out, staging], progress=progress)
        if not built.queries:
            raise CorpusEvalError(f"{', '.join(map(str, sources))}: no usable query (read "
                                  f"{built.counts['documents']} documents; {_reasons(built.skips)})")
        write_beir(staging, built.corpus, built.queries, built.qrels)
        return built.counts, {"domain": built.domain, "skips": built.skips, HOLDOUT_KEY: built.holdout}

    return build_dataset_dir(out, None, source, params, make, force)


def _reasons(skips: dict) -> str:
    parts = [f"{where} {reason}={n}" for where, d in skips.items() for reason, n in d["counts"].items()]
    return ", ".join(parts) or "nothing skipped"


def print_summary(manifest: dict, out: Path, file=None) -> None:
    """How many documents, passages, queries and skips, by reason (rich table)."""
    from rich.console import Console
    from rich.table import Table

    c = manifest["counts"]
    table = Table(title=f"build-evals: {out}", show_header=False)
    rows = [("documents read", c["documents"]), ("documents with a query", c["documents_with_queries"]),
            ("documents held out of training", c["documents_held_out"]),
            ("passages (corpus)", f"{c['docs']} ({', '.join(f'{k}={v}' for k, v in c['passages_by_kind'].items())})"),
            ("candidate queries", c["candidate_queries"]),
            ("queries written", f"{c['queries']} ({', '.join(f'{k}={v}' for k, v in c['queries_by_kind'].items())})"),
            ("domain", manifest.get("domain"))]
    for where in ("queries", "passages", "documents"):
        for reason, n in manifest["skips"][where]["counts"].items():
            rows.append((f"{where} skipped: {reason}", n))
    rows.append(("content hash", manifest["content_hash"]))
    for k, v in rows:
        table.add_row(k, str(v))
    Console(file=file or sys.stdout, width=120).print(table)
