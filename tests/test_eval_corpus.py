"""`revela build-evals --from-corpus`: a retrieval set from a small code tree and a small docs tree, and the
documents it holds out left out of `revela prepare`."""

import json
import platform
import shutil
import textwrap

import pytest
import typer
from typer.testing import CliRunner

from revela.config import RunConfig
from revela.data.config import DataConfig
from revela.data.prepare import prepare, prepare_config
from revela.data.shards import read_groups
from revela.evaluation.beir import MANIFEST, load_beir
from revela.evaluation.cli import register
from revela.evaluation.corpus_eval import build_corpus_eval, corpus_pairs, verbatim_in
from revela.evaluation.prose_sections import sections
from revela.evaluation.suite import build_stdlib_code, resolve_dataset

STORE = textwrap.dedent('''
    """A module docstring is not a query."""
    import functools


    class RecordStore:
        """Keep records in memory and hand them back by key.

        Details below the first paragraph are not part of the query.
        """

        limit = 10

        def __init__(self):
            """Initialize self."""
            self.items = {}

        @functools.lru_cache()
        def save_record(self, key, record):
            """Save one record under its key and return how many are stored."""
            self.items[key] = record
            return len(self.items)

        def load_record(self, key):
            """Returns None."""
            return self.items.get(key)

        def abstract_hook(self):
            """Subclasses override this hook to react to changes."""


    def parse_header(line):
        """Split a header line into its name and value."""
        name, _, value = line.partition(":")
        return name.strip(), value.strip()


    def todo_thing(x):
        """TODO: document this."""
        return x * 2


    def tiny(x):
        """Run it."""
        return x


    def leaky(path):
        """Open the configuration file for reading."""
        # open the configuration file for reading
        return open(path)
''')
OTHER = textwrap.dedent('''
    def parse_header_again(line):
        """Split a header line into its name and value."""
        return line.split(":", 1)


    def compute_checksum(data):
        """Compute a CRC32 checksum over the given bytes."""
        import zlib
        return zlib.crc32(data)
''')
TOPICS = ["invoices", "shipments", "customers", "warehouses", "suppliers", "payments"]


def _module(i: int, topic: str) -> str:
    return textwrap.dedent(f'''
        def load_{topic}(path):
            """Load the {topic} ledger stored at a path on disk for module {i}."""
            with open(path) as f:
                return f.read().splitlines()


        def count_{topic}(rows):
            """Count the {topic} rows that carry a positive amount in batch {i}."""
            return sum(1 for row in rows if float(row) > 0)
    ''')


@pytest.fixture()
def code_tree(tmp_path):
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "store.py").write_text(STORE)
    (root / "other.py").write_text(OTHER)
    for i, topic in enumerate(TOPICS):
        (root / f"mod_{topic}.py").write_text(_module(i, topic))
    (root / "broken.py").write_text("def oops(:\n    pass\n")
    (root / "script.js").write_text("function add(a, b) {\n  // Add two numbers.\n  return a + b;\n}\n")
    return root


GUIDE = textwrap.dedent('''
    Intro text before any heading, long enough to be a passage of its own in this guide.

    # Installing the command line tool

    Download the archive and unpack it into a folder on your path, then run the setup script once.

    ## Configuring the output format

    Set the format option in the settings file to json or text; the default writes plain lines.

    ```python
    # Not a heading inside a fence
    print("hello")
    ```

    ## Installation

    Some body text that is long enough to count as a passage for this small test here.

    ## Reading the log files

    Reading the log files is done with the view command, which pages through them one by one.

    ## A section with a short body

    Too short.
''')
MANUAL = textwrap.dedent('''
    ================
    Reference manual
    ================

    The opening paragraph of the manual describes the purpose of the whole tool in some detail.

    Tuning the cache size
    ---------------------

    The cache keeps recently used entries in memory; raise the limit when lookups miss too often.
''')
RENDERED_MAN = textwrap.dedent('''
    NAME
           tool - process input files

    DESCRIPTION
           The tool reads every input file and writes a summary of the records it found there.
''')
ROFF = textwrap.dedent('''
    .TH TOOL 1
    .SH NAME
    tool \\- process input files
    .SS Reading records from standard input
    .B tool
    reads records from standard input when no file is given and stops at the first empty line.
''')
FAQ = textwrap.dedent('''
    How do I reset the saved settings?

    Delete the settings file in your home folder and start the tool again to get the defaults back.

    Why does the tool ignore my environment variables?

    Only variables with the TOOL_ prefix are read; rename yours so that they start with that prefix.
''')
AGAIN = textwrap.dedent('''
    # Configuring the output format

    A second page repeats an earlier heading; its section is only a distractor in the finished set.
''')


@pytest.fixture()
def docs_tree(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    for name, text in {"guide.md": GUIDE, "manual.rst": MANUAL, "tool.txt": RENDERED_MAN, "tool-roff.txt": ROFF,
                       "faq.txt": FAQ, "zz-again.md": AGAIN}.items():
        (root / name).write_text(text.lstrip("\n"))
    return root


def _manifest(path):
    return json.loads((path / MANIFEST).read_text())


def _pairs(ds):
    return {ds.queries[q]: next(iter(ds.qrels[q])) for q in ds.queries}


def test_code_set_layout_protocol_and_counts(code_tree, tmp_path):
    out = build_corpus_eval([code_tree], tmp_path / "ev")
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == {
        "corpus.jsonl", "queries.jsonl", "qrels/test.tsv", MANIFEST}
    ds = load_beir(out, strict=True)
    m = _manifest(out)
    assert ds.domain == "code" and m["content_hash"] == ds.content_hash
    pairs = _pairs(ds)
    assert pairs["Keep records in memory and hand them back by key."] == "pkg/store.py:6"
    assert pairs["Save one record under its key and return how many are stored."] == "pkg/store.py:19"
    # a duplicate query keeps the first passage in corpus order (files sorted: other.py before store.py)
    assert pairs["Split a header line into its name and value."] == "pkg/other.py:2"
    assert len(ds.queries) == 2 + 1 + 1 + 2 * len(TOPICS)  # class, method, function, checksum, 2 per module
    # the passage is the definition without its docstring; decorators stay; a class is its outline
    method = ds.corpus["pkg/store.py:19"][1]
    assert method.startswith("    @functools.lru_cache()\n    def save_record") and "Save one record" not in method
    outline = ds.corpus["pkg/store.py:6"][1]
    assert "limit = 10" in outline and "def save_record(self, key, record):" in outline
    assert "Keep records" not in outline and "Save one record" not in outline and "self.items[key]" not in outline
    assert "pkg/store.py:14" in ds.corpus  # __init__ stays a passage (a distractor) though its query is dropped
    for q, pid in pairs.items():
        assert not verbatim_in(q, ds.corpus[pid][1]), q
    assert m["counts"]["dropped_queries"] == {"boilerplate": 3, "too_short": 1, "too_small": 1,
                                              "verbatim_in_passage": 1, "duplicate_query": 1}
    assert m["skips"]["queries"]["examples"]["verbatim_in_passage"] == ["pkg/store.py:48"]
    assert m["skips"]["queries"]["examples"]["duplicate_query"] == ["pkg/store.py:32"]
    assert m["skips"]["documents"]["counts"] == {"code_not_python": 1, "python_syntax_error": 1}
    assert m["counts"]["documents"] == 10 and m["counts"]["documents_held_out"] == 0
    assert m["holdout"]["documents"] == [] and m["params"]["holdout"] == 0.0


def test_prose_sections_recognise_each_heading_style():
    got = {(s.heading, s.style) for s in sections(GUIDE + MANUAL + RENDERED_MAN + ROFF + FAQ)}
    assert {("Installing the command line tool", "markdown"), ("Reference manual", "underline"),
            ("Tuning the cache size", "underline"), ("DESCRIPTION", "upper"), ("NAME", "roff"),
            ("Reading records from standard input", "roff"), ("How do I reset the saved settings?", "question"),
            (None, "none")} <= got
    assert not any(h and "Not a heading" in h for h, _ in got)  # a comment inside a fenced block


def test_prose_set_queries_are_headings_and_questions(docs_tree, tmp_path):
    ds = load_beir(build_corpus_eval([docs_tree], tmp_path / "ev"), strict=True)
    pairs = _pairs(ds)
    assert set(pairs) == {"Installing the command line tool", "Configuring the output format",
                          "Tuning the cache size", "Reading records from standard input",
                          "How do I reset the saved settings?", "Why does the tool ignore my environment variables?"}
    assert pairs["Configuring the output format"] == "docs/guide.md:7"  # the first of two, in corpus order
    assert ds.corpus["docs/faq.txt:1"][1].startswith("Delete the settings file")
    assert ds.corpus[pairs["Reading records from standard input"]][1].startswith("tool\nreads records")
    for q, pid in pairs.items():
        assert not verbatim_in(q, ds.corpus[pid][1]), q
    assert "docs/guide.md:1" in ds.corpus  # text before the first heading is a passage without a query
    m = _manifest(ds.path)
    assert ds.domain == "text"
    assert m["counts"]["dropped_queries"] == {"boilerplate": 2, "too_short": 1, "short_passage": 3,
                                              "verbatim_in_passage": 1, "duplicate_query": 1}


def test_same_seed_same_bytes_other_seed_other_holdout(code_tree, tmp_path):
    a = build_corpus_eval([code_tree], tmp_path / "a", holdout=0.5, seed=3)
    b = build_corpus_eval([code_tree], tmp_path / "b", holdout=0.5, seed=3)
    assert _manifest(a)["content_hash"] == _manifest(b)["content_hash"]
    assert _manifest(a)["holdout"] == _manifest(b)["holdout"]
    held = {tuple(d["id"] for d in corpus_pairs([code_tree], holdout=0.5, seed=s).holdout["documents"])
            for s in range(4)}
    assert len(held) > 1 and all(len(h) == 4 for h in held)  # half of the 8 documents with queries
    sampled = {tuple(corpus_pairs([code_tree], max_queries=3, seed=s).queries.values()) for s in range(4)}
    assert len(sampled) > 1 and all(len(q) == 3 for q in sampled)


def test_holdout_documents_are_absent_from_prepared_shards(code_tree, tmp_path):
    ev = build_corpus_eval([code_tree], tmp_path / "ev", holdout=0.5)
    m = _manifest(ev)
    held = {d["id"] for d in m["holdout"]["documents"]}
    assert len(held) == m["counts"]["documents_held_out"] == 4
    ds = load_beir(ev)
    assert all(next(iter(ds.qrels[q])).rsplit(":", 1)[0] in held for q in ds.queries)  # judged on held-out text
    assert m["counts"]["dropped_queries"]["in_training_documents"] > 0

    summary = prepare([code_tree], tmp_path / "shards", group_size=3, exclude_eval=[ev], progress=False,
                      quiet=True)
    doc_ids = {d for ids in read_groups(tmp_path / "shards").column("doc_ids").to_pylist() for d in ids}
    assert doc_ids and not doc_ids & held
    assert summary["skipped"]["eval_holdout"] == 4
    assert summary["exclude_eval"][0]["found"] == 4 and summary["exclude_eval"][0]["not_found"] == 0
    plain = prepare([code_tree], tmp_path / "plain", group_size=3, progress=False, quiet=True)
    assert held <= {d for ids in read_groups(tmp_path / "plain").column("doc_ids").to_pylist() for d in ids}
    assert plain["input_hash"] != summary["input_hash"]

    # the same text under another source name is still recognised (by its sha256), here through the config
    renamed = shutil.copytree(code_tree, tmp_path / "renamed")
    cfg = DataConfig(sources=[str(renamed)], group_size=3, exclude_eval=str(ev))
    assert cfg.exclude_eval == [str(ev)]
    summary = prepare_config(cfg, tmp_path / "shards2", progress=False, quiet=True)
    doc_ids = {d for ids in read_groups(tmp_path / "shards2").column("doc_ids").to_pylist() for d in ids}
    assert summary["skipped"]["eval_holdout"] == 4
    assert not doc_ids & {d.replace("pkg/", "renamed/", 1) for d in held}


def test_a_held_out_query_written_again_in_a_training_document_is_dropped(code_tree):
    """other.py and store.py share a docstring: its query stays only when both files are held out."""
    query = "Split a header line into its name and value."
    for seed, kept in ((3, False), (1, True)):
        built = corpus_pairs([code_tree], holdout=0.5, seed=seed)
        held = {d["id"] for d in built.holdout["documents"]}
        assert "pkg/other.py" in held and ("pkg/store.py" in held) == kept
        assert (query in built.queries.values()) == kept


def test_exclude_eval_refuses_sets_that_hold_nothing_out(code_tree, tmp_path):
    from revela.train.preflight import check_data

    no_holdout = build_corpus_eval([code_tree], tmp_path / "ev0")
    with pytest.raises(ValueError, match="built without --holdout"):
        prepare([code_tree], tmp_path / "s", group_size=3, exclude_eval=[no_holdout], progress=False, quiet=True)
    suite_like = tmp_path / "suite"
    suite_like.mkdir()
    (suite_like / MANIFEST).write_text(json.dumps({"name": "stdlib-code"}))
    with pytest.raises(ValueError, match="names no held-out documents"):
        prepare([code_tree], tmp_path / "s", group_size=3, exclude_eval=[suite_like], progress=False, quiet=True)
    with pytest.raises(ValueError, match="no revela_dataset.json"):
        prepare([code_tree], tmp_path / "s", group_size=3, exclude_eval=[tmp_path], progress=False, quiet=True)
    # shards prepared without the exclusion are refused when a run asks for it, before anything is deleted
    ev = build_corpus_eval([code_tree], tmp_path / "ev", holdout=0.5)
    prepare([code_tree], tmp_path / "plain", group_size=3, progress=False, quiet=True)
    cfg = RunConfig.model_validate({"data": {"shards": str(tmp_path / "plain"), "exclude_eval": str(ev)}})
    with pytest.raises(ValueError, match="prepared without excluding"):
        check_data(cfg)
    with pytest.raises(ValueError, match=r"data\.exclude_eval .*built without --holdout"):
        check_data(RunConfig.model_validate({"data": {"exclude_eval": str(no_holdout)}}))


def test_the_set_works_where_a_dataset_goes(code_tree, tmp_path):
    from revela.evaluation.run import evaluate
    from revela.evaluation.settings import EvalSettings

    ev = build_corpus_eval([code_tree], tmp_path / "ev")
    assert resolve_dataset(str(ev)) == ev
    report = evaluate(EvalSettings.of(datasets=[ev], output=tmp_path / "bm25.json", bm25=True), progress=False)
    entry = report["datasets"]["ev"]
    assert entry["domain"] == "code" and entry["num_queries"] == 16
    assert entry["baselines"]["bm25_ident_split"]["ndcg_at_10"] > 0.5


def test_cli_builds_and_reports(code_tree, tmp_path):
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["build-evals", "--from-corpus", str(code_tree), "--out", str(tmp_path / "ev"),
                                   "--holdout", "0.5", "--seed", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "documents held out of training" in res.output and "queries skipped: boilerplate" in res.output
    res = CliRunner().invoke(app, ["build-evals", "--from-corpus", str(code_tree), "--which", "pyfaq",
                                   "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--which" in res.output
    res = CliRunner().invoke(app, ["build-evals", "--from-corpus", str(code_tree), "--out", str(tmp_path / "x"),
                                   "--holdout", "1"])
    assert res.exit_code == 2 and "--holdout must be in [0, 1)" in res.output
    res = CliRunner().invoke(app, ["build-evals", "--from-corpus", str(tmp_path / "missing"), "--out",
                                   str(tmp_path / "x")])
    assert res.exit_code == 2 and "no such file or directory" in res.output


@pytest.mark.skipif(platform.python_version() != "3.11.7", reason="the pinned hash is of Python 3.11.7's stdlib")
def test_stdlib_code_hash_is_unchanged_by_the_shared_protocol(tmp_path):
    manifest = _manifest(build_stdlib_code(tmp_path))
    assert manifest["content_hash"] == "sha256:150c85b4e14eb9962cbb478573056f70791b51755244dde4a75aed4a8a0ff2f3"
