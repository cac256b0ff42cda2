"""BEIR-layout loading: the happy path, the content hash, and every kind of bad input."""

import json

import pytest

from revela.evaluation.beir import DatasetError, content_hash, load_beir, write_beir

CORPUS = {"d1": ("T1", "alpha text"), "d2": ("", "beta text"), "d3": ("T3", "gamma text")}
QUERIES = {"q1": "alpha?", "q2": "beta?", "q3": "never judged"}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 0}}


def make(tmp_path, corpus=CORPUS, queries=QUERIES, qrels=QRELS, name="ds"):
    return write_beir(tmp_path / name, corpus, queries, qrels)


def append(path, text):
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def test_load_roundtrip_and_beir_conventions(tmp_path):
    ds = load_beir(make(tmp_path))
    assert ds.name == "ds" and ds.split == "test"
    assert ds.doc_ids == ["d1", "d2", "d3"]
    assert ds.doc_texts() == ["T1 alpha text", "beta text", "T3 gamma text"]
    assert ds.queries == {"q1": "alpha?", "q2": "beta?"}  # q3 has no qrels: dropped, as BEIR does
    assert ds.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 0}}
    assert ds.issues == {"queries_without_qrels": 1}
    assert ds.content_hash.startswith("sha256:") and ds.content_hash == content_hash(ds.path)


def test_content_hash_tracks_content_and_split(tmp_path):
    a, b = make(tmp_path, name="a"), make(tmp_path, name="b")
    assert load_beir(a).content_hash == load_beir(b).content_hash  # name-independent, byte-determined
    append(b / "corpus.jsonl", json.dumps({"_id": "d9", "title": "", "text": "new"}) + "\n")
    assert load_beir(a).content_hash != load_beir(b).content_hash
    (a / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    assert load_beir(a, split="dev").content_hash != load_beir(a).content_hash


@pytest.mark.parametrize("file,line,needle", [
    ("corpus.jsonl", '{"_id": "d9", "text": broken}\n', "corpus.jsonl:4: not valid JSON"),
    ("corpus.jsonl", '{"_id": "d1", "title": "", "text": "again"}\n',
     "corpus.jsonl:4: duplicate _id 'd1' (first at line 1)"),
    ("corpus.jsonl", '{"title": "no id", "text": "x"}\n', "corpus.jsonl:4: record has no string '_id'"),
    ("corpus.jsonl", '{"_id": "d9", "title": "no text"}\n', "corpus.jsonl:4: record 'd9' has no 'text'"),
    ("corpus.jsonl", '["not", "an", "object"]\n', "corpus.jsonl:4: expected a JSON object"),
    ("queries.jsonl", '{"_id": "q2", "text": "dup"}\n', "queries.jsonl:4: duplicate _id 'q2'"),
    ("queries.jsonl", '{"_id": "q9", "text": 5}\n', "queries.jsonl:4: record 'q9': 'text' must be a string"),
    ("qrels/test.tsv", "q1\td1\n", "test.tsv:5: expected 3 tab-separated fields"),
    ("qrels/test.tsv", "q1\td2\thigh\n", "test.tsv:5: score 'high' is not a number"),
    ("qrels/test.tsv", "q1\td2\t0.5\n", "test.tsv:5: score '0.5' is not an integer"),
    ("qrels/test.tsv", "q1\td1\t2\n", "test.tsv:5: ('q1', 'd1') judged twice, with scores 1 and 2"),
])
def test_structural_errors_name_file_and_line(tmp_path, file, line, needle):
    path = make(tmp_path)
    append(path / file, line)
    with pytest.raises(DatasetError) as err:
        load_beir(path)
    assert needle in str(err.value)


def test_missing_split_and_files(tmp_path):
    path = make(tmp_path)
    with pytest.raises(DatasetError, match=r"split 'dev' not found; splits available: test"):
        load_beir(path, split="dev")
    (path / "queries.jsonl").unlink()
    with pytest.raises(DatasetError, match=r"queries.jsonl: missing"):
        load_beir(path)
    with pytest.raises(DatasetError, match="not a directory"):
        load_beir(tmp_path / "nope")


def test_data_problems_are_counted_skips_and_strict_rejects_them(tmp_path, caplog):
    corpus = dict(CORPUS, d4=("", "  "))  # empty document
    queries = dict(QUERIES, q4="", q5="all judged zero")  # empty query
    qrels = {"q1": {"d1": 1, "d4": 1, "ghost": 1}, "q2": {"d2": 1}, "q4": {"d1": 1}, "q5": {"d3": 0},
             "q_unknown": {"d1": 1}}
    path = make(tmp_path, corpus, queries, qrels)
    append(path / "qrels" / "test.tsv", "q2\td2\t1\n")  # identical duplicate row
    ds = load_beir(path)
    assert ds.issues == {"empty_docs": 1, "empty_queries": 1, "qrels_unknown_doc": 2, "qrels_unknown_query": 2,
                         "qrels_duplicate": 1, "queries_without_qrels": 1, "queries_without_relevant": 1}
    assert ds.issue_examples["qrels_unknown_doc"] == ["qrels/test.tsv:3 'd4'", "qrels/test.tsv:4 'ghost'"]
    assert set(ds.queries) == {"q1", "q2", "q5"} and "d4" not in ds.corpus
    assert "qrels_unknown_doc=2" in caplog.text  # reported, not silent
    with pytest.raises(DatasetError, match="empty_docs=1"):
        load_beir(path, strict=True)


def test_clean_dataset_passes_strict_and_no_queries_is_an_error(tmp_path):
    assert load_beir(make(tmp_path), strict=True).issues == {"queries_without_qrels": 1}
    path = make(tmp_path, qrels={"zz": {"d1": 1}}, name="empty")
    with pytest.raises(DatasetError, match="no query has judgements"):
        load_beir(path)


def test_subset_is_seeded_and_keeps_the_corpus(tmp_path):
    queries = {f"q{i}": f"query {i}" for i in range(20)}
    ds = load_beir(make(tmp_path, queries=queries, qrels={q: {"d1": 1} for q in queries}))
    a, b = ds.subset(5, seed=1), ds.subset(5, seed=1)
    assert list(a.queries) == list(b.queries) and len(a.queries) == 5 and set(a.qrels) == set(a.queries)
    assert a.corpus is ds.corpus and a.content_hash != ds.content_hash
    assert ds.subset(None) is ds and ds.subset(100) is ds
