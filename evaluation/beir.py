"""BEIR-layout retrieval datasets: load, validate, hash, write.

Layout (beir-cellar/beir `GenericDataLoader`)::

    DIR/corpus.jsonl       {"_id": "d1", "title": "...", "text": "..."} per line
    DIR/queries.jsonl      {"_id": "q1", "text": "..."} per line
    DIR/qrels/<split>.tsv  header row, then  query-id <TAB> corpus-id <TAB> score

Structural problems are errors that name the file and line (`DatasetError`): a line that is not JSON, a
record without `_id` or `text`, a duplicate id, a qrels row without three fields or with a non-integer score,
two different scores for one (query, doc) pair, a missing file or split. Data-quality problems are skipped and
counted in `BeirDataset.issues` (logged as one warning with examples; `strict=True` makes them errors):

- `empty_docs` / `empty_queries`: a document with neither title nor text, a query with empty text;
- `qrels_unknown_query` / `qrels_unknown_doc`: a qrels row naming an id the files do not have (or one skipped
  as empty);
- `qrels_duplicate`: the same (query, doc, score) row twice;
- `queries_without_qrels`: queries with no judgement in this split; dropped, as BEIR does (this one is normal
  when `queries.jsonl` holds every split, so `strict` does not reject it);
- `queries_without_relevant`: queries whose judgements are all below 1; kept (they score 0, as in BEIR).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "revela_dataset.json"
NORMAL_ISSUES = {"queries_without_qrels", "queries_without_relevant"}


class DatasetError(ValueError):
    """A BEIR directory that cannot be read as one; the message names the file (and line)."""


@dataclass
class BeirDataset:
    name: str
    path: Path
    split: str
    corpus: dict[str, tuple[str, str]]
    """doc id -> (title, text), in file order."""
    queries: dict[str, str]
    """query id -> text, only queries with qrels in this split, in file order."""
    qrels: dict[str, dict[str, int]]
    content_hash: str
    """sha256 over corpus.jsonl, queries.jsonl and qrels/<split>.tsv (names, sizes and bytes)."""
    issues: dict[str, int] = field(default_factory=dict)
    issue_examples: dict[str, list[str]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    """The builder's `revela_dataset.json` when there is one (e.g. {"domain": "code"})."""

    @property
    def doc_ids(self) -> list[str]:
        return list(self.corpus)

    def doc_texts(self) -> list[str]:
        """What a document is encoded as: `title + " " + text`, stripped (BEIR and the method's convention)."""
        return [(title + " " + text).strip() for title, text in self.corpus.values()]

    @property
    def query_ids(self) -> list[str]:
        return list(self.queries)

    def query_texts(self) -> list[str]:
        return list(self.queries.values())

    @property
    def domain(self) -> str:
        return self.meta.get("domain", "text")

    def subset(self, max_queries: int | None, seed: int = 0) -> "BeirDataset":
        """The same corpus with at most `max_queries` queries (a seeded sample, kept in file order)."""
        if max_queries is None or max_queries >= len(self.queries):
            return self
        keep = set(random.Random(seed).sample(list(self.queries), max_queries))
        queries = {q: t for q, t in self.queries.items() if q in keep}
        return replace(self, queries=queries, qrels={q: self.qrels[q] for q in queries},
                       content_hash=f"{self.content_hash}/queries={max_queries},seed={seed}")


def _split_file(path: Path, split: str) -> Path:
    qrels = path / "qrels" / f"{split}.tsv"
    if not qrels.is_file():
        have = sorted(p.stem for p in (path / "qrels").glob("*.tsv")) if (path / "qrels").is_dir() else []
        raise DatasetError(f"{qrels}: split {split!r} not found"
                           + (f"; splits available: {', '.join(have)}" if have else "; there is no qrels/*.tsv"))
    return qrels


def _require(path: Path) -> bytes:
    if not path.is_file():
        raise DatasetError(f"{path}: missing (a BEIR directory has corpus.jsonl, queries.jsonl and qrels/<split>.tsv)")
    return path.read_bytes()


def content_hash(path: str | Path, split: str = "test") -> str:
    """The content hash `load_beir` records, computed from the files alone."""
    path = Path(path)
    return _hash({n: _require(path / n) for n in ("corpus.jsonl", "queries.jsonl")}
                 | {f"qrels/{split}.tsv": _split_file(path, split).read_bytes()})


def _hash(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name, data in files.items():
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return "sha256:" + h.hexdigest()


class _Issues:
    def __init__(self):
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, kind: str, where: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n
        ex = self.examples.setdefault(kind, [])
        if len(ex) < 3:
            ex.append(where)


def _records(path: Path, data: bytes):
    """(line number, _id, record) per non-blank line; structural problems raise with file:line."""
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(data.decode("utf-8", errors="strict").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        rid = rec.get("_id")
        if isinstance(rid, int) and not isinstance(rid, bool):
            rid = str(rid)
        if not isinstance(rid, str) or not rid:
            raise DatasetError(f"{path}:{lineno}: record has no string '_id' (got {rec.get('_id')!r})")
        if "text" not in rec:
            raise DatasetError(f"{path}:{lineno}: record {rid!r} has no 'text'")
        for key in ("text", "title"):
            if rec.get(key) is not None and not isinstance(rec[key], str):
                raise DatasetError(f"{path}:{lineno}: record {rid!r}: {key!r} must be a string, "
                                   f"got {type(rec[key]).__name__}")
        if rid in seen:
            raise DatasetError(f"{path}:{lineno}: duplicate _id {rid!r} (first at line {seen[rid]})")
        seen[rid] = lineno
        yield lineno, rid, rec


def _qrels_rows(path: Path, data: bytes):
    """(line number, query id, doc id, score); the header row is recognised by a non-numeric score."""
    for lineno, raw in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        parts = raw.rstrip("\r").split("\t")
        if len(parts) != 3:
            raise DatasetError(f"{path}:{lineno}: expected 3 tab-separated fields (query-id, corpus-id, score), "
                               f"got {len(parts)}: {raw[:80]!r}")
        qid, did, score = (p.strip() for p in parts)
        try:
            value = float(score)
        except ValueError:
            if lineno == 1:
                continue  # header
            raise DatasetError(f"{path}:{lineno}: score {score!r} is not a number") from None
        if value != int(value):
            raise DatasetError(f"{path}:{lineno}: score {score!r} is not an integer relevance grade")
        if not qid or not did:
            raise DatasetError(f"{path}:{lineno}: empty query-id or corpus-id")
        yield lineno, qid, did, int(value)


def _require_some(path: Path, kept: dict, empty: int, what: str) -> None:
    """An empty corpus or query file is named as such (not reported later as 'no query has judgements')."""
    if kept:
        return
    if empty:
        raise DatasetError(f"{path}: every {what} is empty ({empty} records with no text)")
    raise DatasetError(f"{path}: empty (no {what} records)")


def load_beir(path: str | Path, split: str = "test", strict: bool = False, name: str | None = None) -> BeirDataset:
    """Read a BEIR-layout directory; see the module docstring for what is an error and what is a counted skip."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: not a directory (expected a BEIR dataset directory)")
    corpus_file, queries_file, qrels_file = path / "corpus.jsonl", path / "queries.jsonl", _split_file(path, split)
    blobs = {"corpus.jsonl": _require(corpus_file), "queries.jsonl": _require(queries_file),
             f"qrels/{split}.tsv": qrels_file.read_bytes()}
    issues = _Issues()

    corpus: dict[str, tuple[str, str]] = {}
    for lineno, did, rec in _records(corpus_file, blobs["corpus.jsonl"]):
        title, text = rec.get("title") or "", rec.get("text") or ""
        if not (title.strip() or text.strip()):
            issues.add("empty_docs", f"{corpus_file.name}:{lineno} {did!r}")
            continue
        corpus[did] = (title, text)
    _require_some(corpus_file, corpus, issues.counts.get("empty_docs", 0), "document")
    all_queries: dict[str, str] = {}
    for lineno, qid, rec in _records(queries_file, blobs["queries.jsonl"]):
        text = rec.get("text") or ""
        if not text.strip():
            issues.add("empty_queries", f"{queries_file.name}:{lineno} {qid!r}")
            continue
        all_queries[qid] = text
    _require_some(queries_file, all_queries, issues.counts.get("empty_queries", 0), "query")

    qrels: dict[str, dict[str, int]] = {}
    where = f"qrels/{split}.tsv"
    for lineno, qid, did, score in _qrels_rows(qrels_file, blobs[where]):
        if qid not in all_queries:
            issues.add("qrels_unknown_query", f"{where}:{lineno} {qid!r}")
            continue
        if did not in corpus:
            issues.add("qrels_unknown_doc", f"{where}:{lineno} {did!r}")
            continue
        judged = qrels.setdefault(qid, {})
        if did in judged:
            if judged[did] != score:
                raise DatasetError(f"{qrels_file}:{lineno}: ({qid!r}, {did!r}) judged twice, "
                                   f"with scores {judged[did]} and {score}")
            issues.add("qrels_duplicate", f"{where}:{lineno} ({qid!r}, {did!r})")
        judged[did] = score

    queries = {q: t for q, t in all_queries.items() if q in qrels}
    if len(queries) < len(all_queries):
        missing = [q for q in all_queries if q not in qrels]
        issues.counts["queries_without_qrels"] = len(missing)
        issues.examples["queries_without_qrels"] = [repr(q) for q in missing[:3]]
    no_rel = [q for q in queries if max(qrels[q].values()) < 1]
    if no_rel:
        issues.counts["queries_without_relevant"] = len(no_rel)
        issues.examples["queries_without_relevant"] = [repr(q) for q in no_rel[:3]]
    if not queries:
        raise DatasetError(f"{path}: no query has judgements in qrels/{split}.tsv"
                           + (f" (skipped: {issues.counts})" if issues.counts else ""))

    problems = {k: v for k, v in issues.counts.items() if k not in NORMAL_ISSUES}
    if problems:
        detail = "; ".join(f"{k}={v} (e.g. {', '.join(issues.examples[k])})" for k, v in problems.items())
        if strict:
            raise DatasetError(f"{path}: {detail}")
        log.warning("%s: skipped %s", path, detail)
    meta = {}
    if (path / MANIFEST).is_file():
        meta = json.loads((path / MANIFEST).read_text())
    return BeirDataset(name=name or path.resolve().name, path=path, split=split, corpus=corpus, queries=queries,
                       qrels=qrels, content_hash=_hash(blobs), issues=issues.counts,
                       issue_examples=issues.examples, meta=meta)


def write_beir(path: str | Path, corpus: dict[str, tuple[str, str]], queries: dict[str, str],
               qrels: dict[str, dict[str, int]], split: str = "test") -> Path:
    """Write a BEIR-layout directory (the inverse of `load_beir`); returns the directory."""
    path = Path(path)
    (path / "qrels").mkdir(parents=True, exist_ok=True)
    with open(path / "corpus.jsonl", "w", encoding="utf-8") as f:
        for did, (title, text) in corpus.items():
            f.write(json.dumps({"_id": did, "title": title, "text": text}) + "\n")
    with open(path / "queries.jsonl", "w", encoding="utf-8") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with open(path / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, docs in qrels.items():
            for did, score in docs.items():
                f.write(f"{qid}\t{did}\t{score}\n")
    return path
