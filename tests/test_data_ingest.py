"""Ingestion of real corpora (CPython stdlib sources and docs) and every kind of bad input."""

from __future__ import annotations

import json
import os
import shutil
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from revela.data.ingest import (
    IngestError,
    SkipCounter,
    fingerprint_source,
    iter_documents,
    resolve_sources,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def read_all(path, kind="auto", on_bad_record="error"):
    skips = SkipCounter()
    docs = []
    for src in resolve_sources([path]):
        docs.extend(iter_documents(src, skips, kind, on_bad_record))
    return docs, skips


def topics_records():
    from pydoc_data.topics import topics

    return [{"id": k, "title": k.replace("-", " "), "text": v} for k, v in sorted(topics.items())]


def write_jsonl(path: Path, lines: list) -> Path:
    with path.open("wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode())
    return path


# ---------------------------------------------------------------- formats


def test_code_tree_reads_a_real_package_with_stable_ids():
    docs, skips = read_all(STDLIB / "json")
    py_files = sorted(p.relative_to(STDLIB / "json").as_posix() for p in (STDLIB / "json").rglob("*.py")
                      if "__pycache__" not in p.parts)
    assert [d.id for d in docs] == [f"json/{p}" for p in py_files]
    assert all(d.kind == "code" and d.source == "json" for d in docs)
    decoder = next(d for d in docs if d.id == "json/decoder.py")
    assert decoder.text == (STDLIB / "json" / "decoder.py").read_text()
    again, _ = read_all(STDLIB / "json")
    assert [d.id for d in again] == [d.id for d in docs]
    if (STDLIB / "json" / "__pycache__").is_dir():
        assert skips["ignored_dir"] >= 1


def test_tree_mixes_prose_and_code_by_extension(tmp_path):
    tree = tmp_path / "email"
    shutil.copytree(STDLIB / "email", tree, ignore=shutil.ignore_patterns("__pycache__"))
    docs, skips = read_all(tree)
    kinds = {d.id: d.kind for d in docs}
    assert kinds["email/architecture.rst"] == "prose"
    assert kinds["email/message.py"] == "code"
    assert skips.counts == {"empty": 1}  # email/mime/__init__.py is an empty file
    assert skips.examples["empty"] == [str(tree / "mime" / "__init__.py")]
    forced, _ = read_all(tree, kind="prose")
    assert {d.kind for d in forced} == {"prose"}


def test_jsonl_ids_titles_and_fallback_line_ids(tmp_path):
    records = topics_records()[:20]
    records[3] = {"text": records[3]["text"]}  # no id -> line id
    path = write_jsonl(tmp_path / "topics.jsonl", records)
    docs, skips = read_all(path)
    assert len(docs) == 20 and skips.total() == 0
    assert docs[0].id == f"topics.jsonl#{records[0]['id']}"
    assert docs[0].title == records[0]["title"]
    assert docs[3].id == "topics.jsonl#L4" and docs[3].title is None
    assert all(d.kind == "prose" and d.source == "topics.jsonl" for d in docs)


def test_parquet_and_saved_hf_datasets_read_like_jsonl(tmp_path):
    import datasets

    records = topics_records()[:30]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "topics.parquet")
    pdocs, _ = read_all(tmp_path / "topics.parquet")
    assert [d.text for d in pdocs] == [r["text"] for r in records]
    assert pdocs[5].id == f"topics.parquet#{records[5]['id']}"

    ds = datasets.Dataset.from_list([{"text": r["text"]} for r in records])
    ds.save_to_disk(str(tmp_path / "hf"))
    hdocs, _ = read_all(tmp_path / "hf")
    assert [d.text for d in hdocs] == [r["text"] for r in records]
    assert hdocs[7].id == "hf#R7"

    dd = datasets.DatasetDict({"train": ds.select(range(20)), "dev": ds.select(range(20, 30))})
    dd.save_to_disk(str(tmp_path / "hfdict"))
    ddocs, _ = read_all(tmp_path / "hfdict")
    assert len(ddocs) == 30
    assert ddocs[0].id == "hfdict/dev#R0" and ddocs[-1].id == "hfdict/train#R19"
    assert {d.source for d in ddocs} == {"hfdict"}


def test_records_inside_a_tree_and_duplicate_labels(tmp_path):
    (tmp_path / "a" / "corpus").mkdir(parents=True)
    (tmp_path / "b" / "corpus").mkdir(parents=True)
    write_jsonl(tmp_path / "a" / "corpus" / "part1.jsonl", topics_records()[:3])
    shutil.copy(STDLIB / "json" / "tool.py", tmp_path / "b" / "corpus" / "tool.py")
    srcs = resolve_sources([tmp_path / "a" / "corpus", tmp_path / "b" / "corpus"])
    assert [s.label for s in srcs] == ["corpus", "corpus~2"]
    skips = SkipCounter()
    ids = [d.id for s in srcs for d in iter_documents(s, skips)]
    assert ids[:3] == [f"corpus/part1.jsonl#{r['id']}" for r in topics_records()[:3]]
    assert ids[3] == "corpus~2/tool.py"


def test_fingerprint_follows_content(tmp_path):
    tree = tmp_path / "json"
    shutil.copytree(STDLIB / "json", tree, ignore=shutil.ignore_patterns("__pycache__"))
    src = resolve_sources([tree])[0]
    first = fingerprint_source(src)
    assert fingerprint_source(src)["sha256"] == first["sha256"]
    with (tree / "tool.py").open("a") as fh:
        fh.write("\n# edited\n")
    assert fingerprint_source(src)["sha256"] != first["sha256"]


# ---------------------------------------------------------------- bad input


def test_malformed_jsonl_line_is_an_error_naming_file_and_line_or_a_counted_skip(tmp_path):
    recs = topics_records()[:4]
    path = write_jsonl(tmp_path / "bad.jsonl", [recs[0], recs[1], b'{"text": "unterminated\n', recs[2], b"[1, 2]\n"])
    with pytest.raises(IngestError, match=r"bad\.jsonl:3: malformed JSON"):
        read_all(path)
    docs, skips = read_all(path, on_bad_record="skip")
    assert len(docs) == 3
    assert skips["malformed_json"] == 2
    assert skips.examples["malformed_json"] == [f"{path}:3", f"{path}:5"]


def test_missing_text_field(tmp_path):
    recs = topics_records()[:3]
    path = write_jsonl(tmp_path / "nt.jsonl", [recs[0], {"id": "x", "body": "no text here"}, {"text": 42}, recs[1]])
    with pytest.raises(IngestError, match=r"nt\.jsonl:2: no `text` field"):
        read_all(path)
    docs, skips = read_all(path, on_bad_record="skip")
    assert len(docs) == 2 and skips["missing_text"] == 2


def test_non_utf8_bytes(tmp_path):
    recs = topics_records()[:2]
    latin1 = json.dumps({"text": "caf\u00e9 au lait, s'il vous pla\u00eet."}, ensure_ascii=False).encode("latin-1")
    path = write_jsonl(tmp_path / "enc.jsonl", [recs[0], latin1 + b"\n", recs[1]])
    with pytest.raises(IngestError, match=r"enc\.jsonl:2: line is not valid UTF-8"):
        read_all(path)
    docs, skips = read_all(path, on_bad_record="skip")
    assert len(docs) == 2 and skips["non_utf8"] == 1

    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(STDLIB / "json" / "tool.py", tree / "tool.py")
    (tree / "legacy.py").write_bytes(b"# coding: latin-1\nname = '\xe9t\xe9'\n")
    docs, skips = read_all(tree)
    assert [d.id for d in docs] == ["tree/tool.py"]
    assert skips["non_utf8"] == 1 and skips.examples["non_utf8"] == [f"{tree / 'legacy.py'}:2"]


def test_empty_documents_and_blank_lines_are_counted(tmp_path):
    recs = topics_records()[:2]
    path = write_jsonl(tmp_path / "e.jsonl", [recs[0], {"text": "   \n\t"}, b"\n", recs[1]])
    docs, skips = read_all(path)
    assert len(docs) == 2 and skips["empty"] == 1 and skips["blank_line"] == 1
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "__init__.py").write_text("")
    shutil.copy(STDLIB / "json" / "scanner.py", tree / "scanner.py")
    docs, skips = read_all(tree)
    assert [d.id for d in docs] == ["t/scanner.py"] and skips["empty"] == 1


def test_binary_and_unknown_files_in_a_code_tree_are_skipped_and_counted(tmp_path):
    import importlib.util

    tree = tmp_path / "pkg"
    shutil.copytree(STDLIB / "json", tree, ignore=shutil.ignore_patterns("__pycache__"))
    pyc = importlib.util.cache_from_source(str(STDLIB / "json" / "decoder.py"))
    if not Path(pyc).is_file():
        import py_compile

        pyc = py_compile.compile(str(tree / "decoder.py"), cfile=str(tmp_path / "decoder.pyc"))
    shutil.copy(pyc, tree / "decoder.pyc")  # real bytecode: binary
    shutil.copy(pyc, tree / "disguised.py")  # binary content behind a code extension
    (tree / "notes.cfg").write_text("[section]\nkey = value\n")
    docs, skips = read_all(tree)
    assert "pkg/disguised.py" not in {d.id for d in docs}
    assert skips["binary"] == 2
    assert skips["unsupported_extension"] == 1
    assert len(docs) == len(list((STDLIB / "json").glob("*.py")))


def test_unreadable_paths(tmp_path):
    with pytest.raises(IngestError, match="no such file or directory"):
        resolve_sources([tmp_path / "missing.jsonl"])
    with pytest.raises(IngestError, match="no sources"):
        resolve_sources([])
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(STDLIB / "json" / "tool.py", tree / "tool.py")
    os.symlink(tmp_path / "gone.py", tree / "dangling.py")
    docs, skips = read_all(tree)
    assert [d.id for d in docs] == ["tree/tool.py"]
    assert skips["unreadable"] == 1 and skips.examples["unreadable"] == [str(tree / "dangling.py")]
    garbage = tmp_path / "broken.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(IngestError, match=r"broken\.parquet: cannot read as Parquet"):
        read_all(garbage)


def test_record_files_without_a_text_column_fail_clearly(tmp_path):
    import datasets

    pq.write_table(pa.table({"body": ["a"], "id": ["1"]}), tmp_path / "nobody.parquet")
    with pytest.raises(IngestError, match=r"nobody\.parquet: no `text` column \(columns: body, id\)"):
        read_all(tmp_path / "nobody.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(IngestError, match="column `text` has type int64"):
        read_all(tmp_path / "ints.parquet")
    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(IngestError, match="no `text` column"):
        read_all(tmp_path / "hf")
    recs = topics_records()[:3]
    pq.write_table(pa.Table.from_pylist([recs[0], {"id": "n", "title": "t", "text": None}, recs[1]]),
                   tmp_path / "nulls.parquet")
    with pytest.raises(IngestError, match=r"nulls\.parquet:row 1: `text` is null"):
        read_all(tmp_path / "nulls.parquet")
    docs, skips = read_all(tmp_path / "nulls.parquet", on_bad_record="skip")
    assert len(docs) == 2 and skips["missing_text"] == 1
