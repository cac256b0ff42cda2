"""BM25 baseline: identifier splitting, stemming and stopwords, and the run it produces."""

import pytest

from revela.evaluation.baselines import bm25_run, bm25_search, split_identifiers
from revela.evaluation.beir import load_beir, write_beir
from revela.evaluation.metrics import aggregate, per_query


@pytest.mark.parametrize("text,expected", [
    ("foo_barBaz", "foo bar Baz"),
    ("def readFileContents(path_name):", "def read File Contents(path name):"),
    ("__init__", "  init  "),
    ("plain words stay", "plain words stay"),
    ("HTTPServer", "HTTPServer"),  # only a lower-to-upper change splits (the reference rule)
])
def test_split_identifiers(text, expected):
    assert split_identifiers(text) == expected


DOCS = ["def readFileContents(path_name):\n    return open(path_name).getvalue()",
        "def send_mail(to, body):\n    smtp.send(to, body)",
        "class Parser:\n    def parse_tokens(self, toks): ...",
        "The cats are sleeping on the mats."]


def test_identifier_split_lets_words_match_code():
    plain_s, plain_i = bm25_search(DOCS, ["read file contents"], k=4)
    split_s, split_i = bm25_search(DOCS, ["read file contents"], k=4, ident_split=True)
    assert plain_s[0, 0] == 0.0  # without splitting, "readfilecontents" is one token: no match at all
    assert split_i[0, 0] == 0 and split_s[0, 0] > 0


def test_stemming_and_stopwords():
    s, i = bm25_search(DOCS, ["the cat sleeps", "the the of and"], k=4)
    assert i[0, 0] == 3 and s[0, 0] > 0  # cats/sleeping stem to cat/sleep
    assert (s[1] == 0).all()  # a stopword-only query matches nothing
    assert s.shape == (2, 4)


def test_bm25_run_on_a_dataset(tmp_path):
    corpus = {f"d{i}": ("", t) for i, t in enumerate(DOCS)}
    queries = {"q1": "read file contents", "q2": "send an email message", "q3": "parse tokens"}
    qrels = {"q1": {"d0": 1}, "q2": {"d1": 1}, "q3": {"d2": 1}}
    ds = load_beir(write_beir(tmp_path / "code", corpus, queries, qrels))
    run = bm25_run(ds, k=2, ident_split=True)
    assert set(run) == {"q1", "q2", "q3"} and all(len(r) == 2 for r in run.values())
    assert max(run["q3"], key=run["q3"].get) == "d2"
    full = aggregate(per_query(ds.qrels, run))
    assert full["recall_at_100"] == pytest.approx(1.0)
    assert aggregate(per_query(ds.qrels, bm25_run(ds, k=2)))["ndcg_at_10"] < full["ndcg_at_10"]
