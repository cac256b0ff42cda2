"""The offline suite builder on tiny stand-ins for the stdlib and the python3.11-doc HTML."""

import json
import textwrap

import pytest

from revela.evaluation.beir import MANIFEST, DatasetError, load_beir
from revela.evaluation.suite import build_pyfaq, build_stdlib_code, build_suite, resolve_dataset

MODULE = textwrap.dedent('''
    import functools

    def read_config(path):
        """Read the configuration file at the given path. More text follows.

        Details that are not part of the summary.
        """
        with open(path) as f:
            return f.read()

    @functools.lru_cache()
    def parse_header(line):
        """Parse one header line into a key and a value."""
        key, _, value = line.partition(":")
        return key.strip(), value.strip()

    def short(x):
        """Too short."""
        return x

    def __dunder__(self):
        """Dunder methods are never used as queries."""
        return self
        pass

    def two_lines(x):
        """A body that is far too small to count."""

    class First:
        def get(self, x):
            """Return the same value it was given back."""
            y = x
            return y

    class Second:
        def get(self, x):
            """Return an identical body in another class."""
            y = x
            return y

    class Store:
        def save_record(self, record):
            """Save one record to the backing store now."""
            self.items.append(record)
            return len(self.items)
''')


@pytest.fixture()
def stdlib(tmp_path):
    root = tmp_path / "lib"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text(MODULE)
    for excluded in ("test", "pkg/tests", "idlelib", "site-packages/x", "pkg/__pycache__"):
        (root / excluded).mkdir(parents=True, exist_ok=True)
        (root / excluded / "hidden.py").write_text(MODULE.replace("configuration", "hidden configuration"))
    (root / "test_thing.py").write_text(MODULE)
    (root / "broken.py").write_text("def oops(:\n")
    return root


def test_stdlib_code_follows_the_codesearchnet_protocol(stdlib, tmp_path):
    ds = load_beir(build_stdlib_code(tmp_path / "out", stdlib_root=stdlib, num_queries=10), strict=True)
    ids = {d.split(":")[0] for d in ds.corpus}
    assert ids == {"pkg/mod.py"}  # tests, idlelib, site-packages, __pycache__, test_*.py and broken files left out
    by_summary = {ds.queries[q]: next(iter(ds.qrels[q])) for q in ds.queries}
    assert set(by_summary) == {"Read the configuration file at the given path.",
                               "Parse one header line into a key and a value.",
                               "Return the same value it was given back.",
                               "Save one record to the backing store now."}
    parse = ds.corpus[by_summary["Parse one header line into a key and a value."]][1]
    assert parse.startswith("@functools.lru_cache()\ndef parse_header(line):") and '"""' not in parse
    assert len(ds.corpus) == 4  # Second.get's body equals First.get's: kept once; short ones dropped
    assert ds.meta["domain"] == "code" and ds.meta["counts"] == {"docs": 4, "queries": 4, "qrels": 4}


def test_builder_is_deterministic_and_records_hashes(stdlib, tmp_path):
    a = build_stdlib_code(tmp_path / "a", stdlib_root=stdlib, num_queries=2, seed=3)
    b = build_stdlib_code(tmp_path / "b", stdlib_root=stdlib, num_queries=2, seed=3)
    ma, mb = (json.loads((p / MANIFEST).read_text()) for p in (a, b))
    assert ma["files"] == mb["files"] and ma["content_hash"] == mb["content_hash"] == load_beir(a).content_hash
    assert ma["params"] == {"seed": 3, "num_queries": 2} and len(load_beir(a).queries) == 2
    stamp = (a / "corpus.jsonl").stat().st_mtime_ns
    build_stdlib_code(tmp_path / "a", stdlib_root=stdlib, num_queries=2, seed=3)
    assert (a / "corpus.jsonl").stat().st_mtime_ns == stamp  # up to date: not rebuilt
    (a / "corpus.jsonl").write_text("tampered\n")
    build_stdlib_code(tmp_path / "a", stdlib_root=stdlib, num_queries=2, seed=3)
    assert load_beir(a).content_hash == ma["content_hash"]  # a changed file triggers a rebuild


def page(sections):
    body = "".join(f'<section id="{sid}"><h2>{title}<a class="headerlink">¶</a></h2><p>{text}</p>'
                   f'<section id="{sid}-sub"><h3>Nested</h3><p>{"nested words " * 20}</p></section></section>'
                   for sid, title, text in sections)
    return f'<html><body><div role="main">{body}</div></body></html>'


def test_pyfaq_pairs_questions_with_answers(tmp_path):
    html = tmp_path / "html"
    (html / "faq").mkdir(parents=True)
    (html / "library").mkdir()
    answer = "Use the built-in function for it, which works on every platform you are likely to meet today."
    (html / "faq" / "general.html").write_text(page([
        ("why-python", "Why is Python slow?", answer),
        ("short", "Is it short?", "Yes it is."),  # answer under 15 words: not a pair
        ("history", "History of Python", answer)]))  # not a question
    (html / "library" / "os.html").write_text(page([("os-path", "os.path", "word " * 40),
                                                    ("tiny", "tiny", "too few words")]))
    ds = load_beir(build_pyfaq(tmp_path / "out", html_root=html), strict=True)
    assert ds.queries == {"q0": "Why is Python slow?"}
    assert ds.qrels == {"q0": {"faq/general.html#why-python": 1}}
    assert ds.corpus["faq/general.html#why-python"] == ("", answer)
    assert ds.corpus["library/os.html#os-path"][0] == "os.path"
    assert ds.corpus["library/os.html#os-path"][1] == ("word " * 40).strip()  # nested sections not inlined
    assert ds.corpus["library/os.html#os-path-sub"] == ("Nested", ("nested words " * 20).strip())
    assert "library/os.html#tiny" not in ds.corpus
    assert ds.meta["source"]["package"] == "python3.11-doc"


def test_missing_html_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match=r"apt-get install -y python3.11-doc"):
        build_suite(tmp_path, ["pyfaq"], html_root=tmp_path / "nowhere")
    assert not (tmp_path / "pyfaq").exists()
    with pytest.raises(ValueError, match="unknown suite dataset"):
        build_suite(tmp_path, ["beir"])


def test_resolve_dataset(stdlib, tmp_path):
    built = build_stdlib_code(tmp_path, stdlib_root=stdlib)
    assert resolve_dataset("stdlib-code", tmp_path) == built
    assert resolve_dataset(str(built)) == built
    with pytest.raises(DatasetError, match="not built"):
        resolve_dataset("pyfaq", tmp_path, build=False)
    with pytest.raises(DatasetError, match="not a dataset directory"):
        resolve_dataset(tmp_path / "missing")
