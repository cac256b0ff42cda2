"""Read corpora into `Document`s, each with a stable id and its source; count everything skipped.

Formats, chosen from the path:
- `*.jsonl`: one JSON object per line with `text` and optional `title` / `id` / `kind` / `language`.
- `*.parquet`: a `text` column, optional `title` / `id` / `kind` / `language` columns.
- a directory holding a saved Hugging Face dataset (`datasets.save_to_disk`, Dataset or DatasetDict).
- any other directory: a tree walked in sorted order. `.jsonl` and `.parquet` files inside it are read
  as records; prose files (.txt .md .rst) and source files (.py .c .js ...) become one document each.
- any other single file: one document.

Kinds (prose or code; code trains without V-norm and the first-half view). `kind="prose"|"code"` labels every
document. `kind="auto"`: files in a tree by extension; records by their own `kind` field ("prose" or "code"),
else their `language` field (a programming language such as "python" or "java" -> code, anything else -> prose,
as CoIR corpora label their records), else prose; every document notes where its kind came from (`kind_from`),
so `prepare` can report records that had no such field.

Ids are stable across runs and machines: `<label>/<relative path>` for files of a tree (just `<label>`
for a single-file source), with `#<id>` (the record's own id) or `#L<line>` / `#R<row>` appended for
records. `label` is the source path's base name (made unique when two sources share one).

Bad input. Nothing is dropped silently; every skip is counted by reason in a `SkipCounter`:
| problem                                    | on_bad_record="error"        | on_bad_record="skip"   |
|--------------------------------------------|------------------------------|------------------------|
| malformed JSONL line / not a JSON object   | IngestError file:line        | skip `malformed_json`  |
| record without a string `text`             | IngestError file:line        | skip `missing_text`    |
| record line that is not UTF-8              | IngestError file:line        | skip `non_utf8`        |
| record `kind` not "prose"/"code"           | IngestError file:line        | skip `bad_kind`        |
| Parquet / HF dataset without a text column | IngestError (always)         | IngestError            |
| source path missing or unreadable          | IngestError (always)         | IngestError            |
| a file named as a source: binary, not UTF-8 | IngestError (always)        | IngestError            |
| empty or whitespace-only document          | skip `empty`                 | skip `empty`           |
| blank line in a JSONL file                 | skip `blank_line`            | skip `blank_line`      |
| file in a tree: NUL bytes                  | skip `binary`                | skip `binary`          |
| file in a tree: not UTF-8                  | skip `non_utf8`              | skip `non_utf8`        |
| file in a tree: unknown extension          | skip `unsupported_extension` | same                   |
| file in a tree: cannot be read (dangling)  | skip `unreadable`            | skip `unreadable`      |
| `__pycache__`, hidden or symlinked dirs    | skip `ignored_dir` (one per directory)                |
| the output folder inside a source tree     | skip `output_dir` (never read back as input)          |
| a source given twice (same resolved path)  | read once; `unique_sources` returns the repeats       |
Files inside a tree are skipped rather than fatal because real trees (e.g. a Python package) always hold
a few binaries; records in a JSONL/Parquet file are fatal by default because a bad line means a broken
export. Documents shorter than one sentence are handled by the chunker (`too_short`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Kind = Literal["prose", "code"]
KindChoice = Literal["prose", "code", "auto"]
OnBad = Literal["error", "skip"]

PROSE_EXTENSIONS = frozenset({".txt", ".md", ".rst", ".text", ".markdown"})
CODE_EXTENSIONS = frozenset(
    {".py", ".pyi", ".pyx", ".c", ".h", ".cc", ".cpp", ".hpp", ".cxx", ".java", ".kt", ".scala", ".js",
     ".jsx", ".ts", ".tsx", ".go", ".rs", ".rb", ".php", ".cs", ".swift", ".m", ".sh", ".bash", ".pl",
     ".lua", ".r", ".jl", ".sql", ".hs", ".ml", ".ex", ".erl", ".clj", ".dart", ".zig"}
)
RECORD_EXTENSIONS = frozenset({".jsonl", ".parquet"})
CODE_LANGUAGES = frozenset(
    {"python", "py", "java", "javascript", "js", "typescript", "ts", "go", "golang", "php", "ruby", "rust", "c",
     "cpp", "c++", "csharp", "c#", "kotlin", "scala", "swift", "objective-c", "objc", "shell", "bash", "sh",
     "powershell", "perl", "lua", "r", "julia", "sql", "haskell", "ocaml", "elixir", "erlang", "clojure", "dart",
     "zig", "matlab", "fortran", "assembly", "html", "css", "verilog", "vhdl", "solidity", "code"}
)
"""`language` values (case-insensitive) that make a record code; CoIR uses these names."""
RECORD_KIND_FIELDS = ("kind", "language")
READER_VERSION = 2
"""Part of prepare's input hash; bumped when the same input can be read differently (2: record kinds)."""
_SNIFF_BYTES = 8192


class IngestError(ValueError):
    """Input that cannot be read; the message starts with `file[:line]`."""


class BadRecordError(IngestError):
    """A bad record under on_bad_record="error"; the message says how to skip such records instead, in the words of
    a run config (`revela prepare` rewords it for its --on-bad-record flag)."""

    def __init__(self, where: str, problem: str):
        self.where, self.problem = where, problem
        super().__init__(f"{where}: {problem} (set data.on_bad_record: skip to skip and count such records)")


@dataclass
class SkipCounter:
    """Counts skipped items by reason and keeps the first few locations of each, for the summary/manifest."""

    max_examples: int = 5
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        seen = self.examples.setdefault(reason, [])
        if len(seen) < self.max_examples:
            seen.append(where)

    def total(self) -> int:
        return sum(self.counts.values())

    def __getitem__(self, reason: str) -> int:
        return self.counts.get(reason, 0)

    def as_dict(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())), "examples": dict(sorted(self.examples.items()))}


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    source: str
    """Label of the source it came from (see `resolve_sources`)."""
    kind: Kind
    title: str | None = None
    where: str = ""
    """file[:line] for messages."""
    kind_from: str = "option"
    """Where `kind` came from: option (--kind), extension, kind_field, language_field or default (a record
    without either field under kind=auto, taken as prose)."""


@dataclass(frozen=True)
class Source:
    path: Path
    label: str
    exclude: tuple[Path, ...] = ()
    """Resolved folders inside a tree that are never read (prepare's own output folder)."""

    @property
    def format(self) -> str:
        return detect_format(self.path)


def unique_sources(paths: list[str | Path]) -> tuple[list[str | Path], list[str]]:
    """(`paths` without repeats of a file or folder already listed, compared by resolved path; the repeats left
    out, as given), so `--source X --source X` (or `X` and `./X`) reads every document once."""
    seen, kept, repeated = set(), [], []
    for raw in paths:
        key = Path(raw).expanduser().resolve()
        if key in seen:
            repeated.append(str(raw))
        else:
            seen.add(key)
            kept.append(raw)
    return kept, repeated


def resolve_sources(paths: list[str | Path], exclude: list[str | Path] = ()) -> list[Source]:
    """Check every path is readable and give each a unique, stable label (its base name).

    `exclude`: folders left out of every tree (prepare passes its output folder, which may sit inside a source).
    """
    if not paths:
        raise IngestError("no sources given")
    skip = tuple(Path(e).expanduser().resolve() for e in exclude)
    out: list[Source] = []
    used: dict[str, int] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise IngestError(f"{path}: no such file or directory")
        if not os.access(path, os.R_OK):
            raise IngestError(f"{path}: not readable")
        if any(path.resolve() == e or e in path.resolve().parents for e in skip):
            raise IngestError(f"{path}: is (inside) the output folder; it cannot also be a source")
        base = path.resolve().name or "root"
        used[base] = used.get(base, 0) + 1
        label = base if used[base] == 1 else f"{base}~{used[base]}"
        out.append(Source(path=path, label=label, exclude=skip))
    return out


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return "hf_dataset"
        return "tree"
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    return "file"


def file_kind(path: Path, kind: KindChoice) -> Kind:
    if kind != "auto":
        return kind
    return "code" if path.suffix.lower() in CODE_EXTENSIONS else "prose"


def record_kind(record: dict, choice: KindChoice, where: str, on_bad: "OnBad",
                skips: SkipCounter) -> tuple[Kind, str] | None:
    """(kind, where it came from) of one record (rules in the module docstring); None when skipped as bad."""
    if choice != "auto":
        return choice, "option"
    given = record.get("kind")
    if given is not None:
        value = given.strip().lower() if isinstance(given, str) else given
        if value not in ("prose", "code"):
            _bad(on_bad, skips, "bad_kind", where, f"`kind` must be \"prose\" or \"code\", got {given!r}")
            return None
        return value, "kind_field"
    language = record.get("language")
    if isinstance(language, str) and language.strip():
        return ("code" if language.strip().lower() in CODE_LANGUAGES else "prose"), "language_field"
    return "prose", "default"


def iter_documents(
    source: Source, skips: SkipCounter, kind: KindChoice = "auto", on_bad_record: OnBad = "error"
) -> Iterator[Document]:
    """Yield the documents of one source in a deterministic order."""
    fmt = source.format
    if fmt == "jsonl":
        yield from _read_jsonl(source.path, source.label, kind, skips, on_bad_record)
    elif fmt == "parquet":
        yield from _read_parquet(source.path, source.label, kind, skips, on_bad_record)
    elif fmt == "hf_dataset":
        yield from _read_hf_dataset(source.path, source.label, kind, skips, on_bad_record)
    elif fmt == "tree":
        yield from _read_tree(source, kind, skips, on_bad_record)
    else:
        text = _read_text_file(source.path, str(source.path), skips)
        if text is not None:
            yield from _one_document(source.label, text, source.label, file_kind(source.path, kind), skips,
                                     str(source.path), kind_from=_file_kind_from(kind))


def _file_kind_from(kind: KindChoice) -> str:
    return "extension" if kind == "auto" else "option"


def walk_files(root: Path, skips: SkipCounter | None = None, exclude: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Files under `root` in sorted order; ignored directories are counted once each, `exclude`d ones too."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        keep = []
        for d in sorted(dirnames):
            full = Path(dirpath) / d
            if exclude and full.resolve() in exclude:
                if skips is not None:
                    skips.add("output_dir", str(full))
            elif d.startswith(".") or d == "__pycache__" or full.is_symlink():
                if skips is not None:
                    skips.add("ignored_dir", str(full))
            else:
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _read_tree(source: Source, kind: KindChoice, skips: SkipCounter, on_bad: OnBad) -> Iterator[Document]:
    for path in walk_files(source.path, skips, source.exclude):
        rel = path.relative_to(source.path).as_posix()
        label = f"{source.label}/{rel}"
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            yield from _read_jsonl(path, label, kind, skips, on_bad)
        elif suffix == ".parquet":
            yield from _read_parquet(path, label, kind, skips, on_bad)
        else:
            text = _read_text_file(path, str(path), skips, require_known_extension=True)
            if text is not None:
                yield from _one_document(label, text, source.label, file_kind(path, kind), skips, str(path),
                                         kind_from=_file_kind_from(kind))


def _read_text_file(path: Path, where: str, skips: SkipCounter, require_known_extension: bool = False) -> str | None:
    try:
        data = path.read_bytes()
    except OSError as e:
        if not require_known_extension:  # a single-file source: the user named it, so fail loudly
            raise IngestError(f"{where}: cannot read: {e.strerror or e}") from e
        skips.add("unreadable", where)
        return None
    named = not require_known_extension  # a file named as a source: the user asked for it, so fail loudly
    if b"\x00" in data[:_SNIFF_BYTES]:
        if named:
            raise IngestError(f"{where}: a binary file (NUL bytes), not text")
        skips.add("binary", where)
        return None
    suffix = path.suffix.lower()
    if require_known_extension and suffix not in PROSE_EXTENSIONS and suffix not in CODE_EXTENSIONS:
        skips.add("unsupported_extension", where)
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        if named:
            raise IngestError(f"{where}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x}); re-encode the file "
                              "as UTF-8") from None
        skips.add("non_utf8", f"{where}:{line}")
        return None


def _one_document(doc_id: str, text: str, source: str, kind: Kind, skips: SkipCounter, where: str,
                  title: str | None = None, kind_from: str = "option") -> Iterator[Document]:
    if not text.strip():
        skips.add("empty", where)
        return
    yield Document(id=doc_id, text=text, source=source, kind=kind, title=title, where=where, kind_from=kind_from)


def _bad(on_bad: OnBad, skips: SkipCounter, reason: str, where: str, message: str) -> None:
    if on_bad == "error":
        raise BadRecordError(where, message)
    skips.add(reason, where)


def _record_id(label: str, given: object, fallback: str) -> str:
    if given is None or (isinstance(given, str) and not given.strip()):
        return f"{label}#{fallback}"
    return f"{label}#{given}"


def _source_of(label: str) -> str:
    return label.split("/", 1)[0]


def _read_jsonl(path: Path, label: str, kind: KindChoice, skips: SkipCounter, on_bad: OnBad) -> Iterator[Document]:
    try:
        fh = path.open("rb")
    except OSError as e:
        raise IngestError(f"{path}: cannot read: {e.strerror or e}") from e
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                _bad(on_bad, skips, "non_utf8", where, "line is not valid UTF-8")
                continue
            if not line.strip():
                skips.add("blank_line", where)
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                _bad(on_bad, skips, "malformed_json", where, f"malformed JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(obj, dict):
                _bad(on_bad, skips, "malformed_json", where, f"expected a JSON object, got {type(obj).__name__}")
                continue
            text = obj.get("text")
            if not isinstance(text, str):
                what = "no `text` field" if "text" not in obj else f"`text` is {type(text).__name__}, not a string"
                _bad(on_bad, skips, "missing_text", where, what)
                continue
            resolved = record_kind(obj, kind, where, on_bad, skips)
            if resolved is None:
                continue
            title = obj.get("title") if isinstance(obj.get("title"), str) else None
            yield from _one_document(_record_id(label, obj.get("id"), f"L{lineno}"), text, _source_of(label),
                                     resolved[0], skips, where, title, kind_from=resolved[1])


def _check_text_column(names: list[str], types: dict[str, str], where: Path) -> None:
    if "text" not in names:
        raise IngestError(f"{where}: no `text` column (columns: {', '.join(names)})")
    if types["text"] not in ("string", "large_string", "string_view"):
        raise IngestError(f"{where}: column `text` has type {types['text']}, expected string")


def _records(rows: Iterator[dict], path: Path, label: str, kind: KindChoice, skips: SkipCounter, on_bad: OnBad,
             row_prefix: str = "R") -> Iterator[Document]:
    for i, row in enumerate(rows):
        where = f"{path}:row {i}"
        text = row.get("text")
        if text is None:
            _bad(on_bad, skips, "missing_text", where, "`text` is null")
            continue
        resolved = record_kind(row, kind, where, on_bad, skips)
        if resolved is None:
            continue
        title = row.get("title") if isinstance(row.get("title"), str) else None
        yield from _one_document(_record_id(label, row.get("id"), f"{row_prefix}{i}"), text, _source_of(label),
                                 resolved[0], skips, where, title, kind_from=resolved[1])


def _read_parquet(path: Path, label: str, kind: KindChoice, skips: SkipCounter, on_bad: OnBad) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for corrupt or unreadable files
        raise IngestError(f"{path}: cannot read as Parquet: {e}") from e
    schema = pf.schema_arrow
    _check_text_column(schema.names, {f.name: str(f.type) for f in schema}, path)
    columns = [c for c in ("text", "title", "id", *RECORD_KIND_FIELDS) if c in schema.names]

    def rows() -> Iterator[dict]:
        for batch in pf.iter_batches(columns=columns, batch_size=2048):
            yield from batch.to_pylist()

    yield from _records(rows(), path, label, kind, skips, on_bad)


def _read_hf_dataset(path: Path, label: str, kind: KindChoice, skips: SkipCounter,
                     on_bad: OnBad) -> Iterator[Document]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, arrow errors
        raise IngestError(f"{path}: cannot load saved dataset: {e}") from e
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    for split, ds in sorted(splits, key=lambda kv: kv[0] or ""):
        where = path / split if split else path
        _check_text_column(ds.column_names, {k: getattr(v, "dtype", str(v)) for k, v in ds.features.items()}, where)
        columns = [c for c in ("text", "title", "id", *RECORD_KIND_FIELDS) if c in ds.column_names]
        view = ds.select_columns(columns)

        def rows(view=view) -> Iterator[dict]:
            for batch in view.iter(batch_size=2048):
                n = len(batch["text"])
                for i in range(n):
                    yield {c: batch[c][i] for c in columns}

        split_label = f"{label}/{split}" if split else label
        yield from _records(rows(), where, split_label, kind, skips, on_bad)


def fingerprint_source(source: Source) -> dict:
    """Content hash of everything the source could contribute (file names and bytes), for the manifest.

    A tree is hashed over the same files `walk_files` visits, so renaming, adding or editing a file changes
    the hash; an unreadable file contributes its name and a marker.
    """
    h = hashlib.sha256()
    files = 0
    total = 0
    paths = [source.path] if source.path.is_file() else list(walk_files(source.path, exclude=source.exclude))
    for p in paths:
        rel = p.name if p == source.path else p.relative_to(source.path).as_posix()
        h.update(rel.encode() + b"\0")
        try:
            with p.open("rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
                    total += len(block)
        except OSError:
            h.update(b"<unreadable>")
        h.update(b"\0")
        files += 1
    return {"label": source.label, "path": str(source.path.resolve()), "format": source.format,
            "sha256": h.hexdigest(), "files": files, "bytes": total}
