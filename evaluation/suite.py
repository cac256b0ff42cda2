"""The offline evaluation suite, built from real text that ships with Python and a Debian package.

No standard IR benchmark can be installed offline, so the suite uses pairings that occur naturally in the source
(docs/offline-assets.md, Evaluation sets; reference baselines in bench/EVAL_NOTES.md):

- `stdlib-code`: the CodeSearchNet protocol on the CPython standard library of the running interpreter. Query =
  the first sentence of a function's docstring (at least 4 words, at most 300 characters, unique among all
  candidates, case-insensitively); document = that function's source without its docstring (at least 3 lines,
  at most 4000 characters; identical bodies kept once). Every kept function is a document; 1000 of them (seed 0)
  get a query. Tests, `idlelib`, `lib2to3`, `site-packages` and dunder methods are left out. The pairing itself
  is `revela.evaluation.codesearchnet`, shared with sets built from a user's own code (`corpus_eval`).
- `pyfaq`: the Python FAQ from the Debian package `python3.11-doc` (`/usr/share/doc/python3.11/html`). Query =
  an FAQ question heading; document = its answer (at least 15 words). Distractors: every section of at least 30
  words in library/, howto/, tutorial/, reference/ and using/ (text cut at 6000 characters).

Scores on this suite are not comparable with published BEIR numbers; say so when reporting them.

The builder is deterministic: files and directories are visited in sorted order and the query sample is seeded,
so a given Python patch release and doc package version always give the same bytes. Each dataset directory gets a
`revela_dataset.json` recording its source, parameters, counts, per-file sha256 and the content hash that
`revela.evaluation.beir.load_beir` reports. Generated data is never committed: it goes to `--out`, by default
`$REVELA_CACHE/evals` or `<repo>/.cache/evals`.

Usage::

    revela build-evals --out .cache/evals --which stdlib-code,pyfaq
    python -c "from revela.evaluation.suite import build_suite; print(build_suite())"
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from revela.evaluation.beir import MANIFEST, DatasetError, content_hash, write_beir
from revela.evaluation.codesearchnet import first_sentence, python_definitions

log = logging.getLogger(__name__)

SUITE = ("stdlib-code", "pyfaq")
BUILDER_VERSION = 1
DEFAULT_HTML_ROOT = "/usr/share/doc/python3.11/html"
DOC_PACKAGE = "python3.11-doc"
PYFAQ_DISTRACTOR_DIRS = ("library", "howto", "tutorial", "reference", "using")
_EXCLUDED_TOP = ("site-packages", "idlelib", "lib2to3")


def default_eval_dir() -> Path:
    """`$REVELA_CACHE/evals` when REVELA_CACHE is set, else `.cache/evals` under the repository."""
    if os.environ.get("REVELA_CACHE"):
        return Path(os.environ["REVELA_CACHE"]) / "evals"
    return Path(__file__).resolve().parent.parent / ".cache" / "evals"


# ---------------------------------------------------------------------------------------------- stdlib-code


@dataclass(frozen=True)
class _Function:
    doc_id: str
    code: str
    summary: str


def _skip_dir(rel: str) -> bool:
    parts = [] if rel == "." else rel.split(os.sep)
    return bool(parts) and (parts[0].startswith(_EXCLUDED_TOP) or "__pycache__" in parts
                            or any(p.startswith("test") for p in parts))


def _stdlib_files(root: Path):
    for directory, dirs, files in os.walk(root):
        rel = os.path.relpath(directory, root)
        dirs.sort()
        if _skip_dir(rel):
            dirs.clear()
            continue
        for fn in sorted(files):
            if fn.endswith(".py") and not fn.startswith("test_"):
                yield Path(directory, fn)


def _functions(path: Path, rel: str):
    try:
        definitions = list(python_definitions(path.read_text(encoding="utf-8")))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for d in definitions:
        if d.name.startswith("__") or not d.docstring:
            continue
        summary = first_sentence(d.docstring)
        if len(summary.split()) < 4 or len(summary) > 300:
            continue
        if d.lines < 3 or len(d.code) > 4000:
            continue
        yield _Function(f"{rel}:{d.line}", d.code, summary)


def stdlib_code_pairs(stdlib_root: str | Path | None = None, seed: int = 0, num_queries: int = 1000):
    """(corpus, queries, qrels) of stdlib-code, without writing anything."""
    root = Path(stdlib_root or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DatasetError(f"{root}: standard library directory not found")
    functions = [f for path in _stdlib_files(root) for f in _functions(path, os.path.relpath(path, root))]
    summary_counts = Counter(f.summary.lower() for f in functions)
    corpus: dict[str, tuple[str, str]] = {}
    pairs: list[tuple[str, str]] = []
    bodies: set[str] = set()
    for f in functions:
        if f.code in bodies:
            continue
        bodies.add(f.code)
        corpus[f.doc_id] = ("", f.code)
        if summary_counts[f.summary.lower()] == 1:
            pairs.append((f.doc_id, f.summary))
    random.Random(seed).shuffle(pairs)
    pairs = pairs[:num_queries]
    queries = {f"q{i}": summary for i, (_, summary) in enumerate(pairs)}
    qrels = {f"q{i}": {doc_id: 1} for i, (doc_id, _) in enumerate(pairs)}
    return corpus, queries, qrels


def build_stdlib_code(out: str | Path, *, seed: int = 0, num_queries: int = 1000,
                      stdlib_root: str | Path | None = None, force: bool = False) -> Path:
    """Build `<out>/stdlib-code` (unless an identical build is there); returns the dataset directory."""
    root = Path(stdlib_root or sysconfig.get_paths()["stdlib"]).resolve()
    source = {"python": sys.version.split()[0], "stdlib": str(root)}
    params = {"seed": seed, "num_queries": num_queries}

    def make(staging: Path):
        corpus, queries, qrels = stdlib_code_pairs(root, seed, num_queries)
        if not queries:
            raise DatasetError(f"{root}: no documented functions found; is this a Python standard library?")
        write_beir(staging, corpus, queries, qrels)
        return {"docs": len(corpus), "queries": len(queries), "qrels": len(qrels)}

    return build_dataset_dir(Path(out) / "stdlib-code", "code", source, params, make, force)


# ---------------------------------------------------------------------------------------------------- pyfaq


def _doc_package_version() -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", DOC_PACKAGE], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _html_sections(path: str):
    """(section id, heading, text) for every <section> of a Sphinx page, in document order."""
    from bs4 import BeautifulSoup

    with open(path, encoding="utf-8") as f:
        soup = BeautifulSoup(f.read(), "html.parser")
    main = soup.find("div", attrs={"role": "main"}) or soup.find("div", class_="body") or soup
    headings = ("h1", "h2", "h3", "h4", "h5")
    for section in main.find_all("section"):
        heading = section.find(list(headings), recursive=False)
        if heading is None:
            continue
        title = heading.get_text(" ", strip=True).rstrip("¶").strip()
        children = [c.get_text(" ", strip=True) for c in section.find_all(recursive=False)
                    if c.name not in ("section", *headings)]
        yield section.get("id", ""), title, " ".join(" ".join(children).split())


def pyfaq_pairs(html_root: str | Path = DEFAULT_HTML_ROOT):
    """(corpus, queries, qrels) of pyfaq, without writing anything."""
    root = Path(html_root)
    faq_pages = sorted(glob.glob(str(root / "faq" / "*.html")))
    if not faq_pages:
        raise DatasetError(
            f"{root}: no faq/*.html; pyfaq needs the Python 3.11 HTML docs from the Debian package {DOC_PACKAGE} "
            f"(apt-get install -y {DOC_PACKAGE}, or `apt-get download {DOC_PACKAGE} && dpkg -x` it and pass "
            f"the usr/share/doc/python3.11/html folder inside as html_root / --html-root)")
    corpus: dict[str, tuple[str, str]] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for page in faq_pages:
        for sid, title, text in _html_sections(page):
            if title.endswith("?") and len(text.split()) >= 15:
                doc_id, qid = f"faq/{os.path.basename(page)}#{sid}", f"q{len(queries)}"
                corpus[doc_id] = ("", text)
                queries[qid] = title
                qrels[qid] = {doc_id: 1}
    for sub in PYFAQ_DISTRACTOR_DIRS:
        for page in sorted(glob.glob(str(root / sub / "*.html"))):
            for sid, title, text in _html_sections(page):
                if len(text.split()) >= 30:
                    corpus[f"{sub}/{os.path.basename(page)}#{sid}"] = (title, text[:6000])
    return corpus, queries, qrels


def build_pyfaq(out: str | Path, *, html_root: str | Path = DEFAULT_HTML_ROOT, force: bool = False) -> Path:
    """Build `<out>/pyfaq` from the python3.11-doc HTML; a clear error when that HTML is missing."""
    root = Path(html_root).resolve()
    source = {"html_root": str(root), "package": DOC_PACKAGE, "package_version": _doc_package_version()}

    def make(staging: Path):
        corpus, queries, qrels = pyfaq_pairs(root)
        if not queries:
            raise DatasetError(f"{root}/faq: no FAQ question with an answer of 15+ words found")
        write_beir(staging, corpus, queries, qrels)
        return {"docs": len(corpus), "queries": len(queries), "qrels": len(qrels)}

    if not (root / "faq").is_dir():
        pyfaq_pairs(root)  # raises the explanatory error
    return build_dataset_dir(Path(out) / "pyfaq", "text", source, params={}, make=make, force=force)


# ------------------------------------------------------------------------------------------------- building


def _file_hashes(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}


def build_dataset_dir(target: Path, domain: str | None, source: dict, params: dict, make, force: bool) -> Path:
    """Build a dataset directory with `make(staging)` unless an identical build is there; write its manifest.

    `make` writes the BEIR files into `staging` and returns its counts, or (counts, more manifest fields) when
    the builder records more (such as its `domain`, known only once the input is read).
    """
    identity = {"name": target.name, "builder_version": BUILDER_VERSION, "source": source, "params": params}
    manifest_path = target / MANIFEST
    if manifest_path.is_file() and not force:
        old = json.loads(manifest_path.read_text())
        if {k: old.get(k) for k in identity} == identity and old.get("files") == _file_hashes(target):
            log.info("%s is up to date (%s)", target, old.get("content_hash"))
            return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        counts, extra = made if isinstance(made := make(staging), tuple) else (made, {})
        manifest = identity | {"domain": domain, "split": "test", "counts": counts} | extra | {
            "files": _file_hashes(staging), "content_hash": content_hash(staging, "test")}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:
            if not manifest_path.is_file():  # a concurrent builder that finished first is fine; anything else not
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("built %s: %s", target, counts)
    return target


def build_suite(out: str | Path | None = None, which: tuple[str, ...] | list[str] = SUITE, *,
                html_root: str | Path = DEFAULT_HTML_ROOT, force: bool = False) -> dict[str, Path]:
    """Build the named suite datasets into `out` (default `default_eval_dir()`); name -> directory."""
    out = Path(out) if out else default_eval_dir()
    unknown = [w for w in which if w not in SUITE]
    if unknown:
        raise ValueError(f"unknown suite dataset(s) {unknown}; the suite has {', '.join(SUITE)}")
    built = {}
    for name in which:
        if name == "stdlib-code":
            built[name] = build_stdlib_code(out, force=force)
        else:
            built[name] = build_pyfaq(out, html_root=html_root, force=force)
    return built


def resolve_dataset(name_or_dir: str | Path, eval_dir: str | Path | None = None, build: bool = True) -> Path:
    """A dataset directory for a path, or for a suite name (built into `eval_dir` on first use when `build`)."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_dir)
    if name in SUITE:
        target = Path(eval_dir or default_eval_dir()) / name
        if (target / MANIFEST).is_file():
            return target
        if build:
            return build_suite(eval_dir, [name])[name]
        raise DatasetError(f"suite dataset {name!r} is not built in {target.parent}; run: revela build-evals "
                           f"--out {target.parent} --which {name}")
    raise DatasetError(f"{name_or_dir}: not a dataset directory and not a suite name ({', '.join(SUITE)})")
