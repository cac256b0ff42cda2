"""`revela prepare` (revela.data.prepare): a source given twice is read once (and reported), and its errors name
the flag the user typed (`--on-bad-record skip`), while the same errors from a run config name the config key."""

import json
import shutil
import sysconfig
from pathlib import Path

import pytest
from typer.testing import CliRunner

from revela.cli import app
from revela.data.shards import read_manifest
from cli_checks import cli, one_error_line

runner = CliRunner()
STDLIB = Path(sysconfig.get_paths()["stdlib"])
PROSE = "Rivers carry water from the hills down to the sea. Fish swim upstream in spring to lay their eggs."


def write_corpus(path, n=12):
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": f"{PROSE} Document {i}."}) + "\n" for i in range(n)))
    return path


def test_a_source_given_twice_is_read_once_and_reported(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    (tmp_path / "sub").mkdir()
    once = runner.invoke(app, ["prepare", "--source", corpus, "--out", tmp_path / "once", "--group-size", "3",
                               "--no-progress"])
    assert once.exit_code == 0, once.output
    same = tmp_path / "sub" / ".." / "corpus.jsonl"  # the same file under another spelling
    twice = runner.invoke(app, ["prepare", "--source", corpus, "--source", corpus, "--source", same,
                                "--out", tmp_path / "twice", "--group-size", "3", "--no-progress"])
    assert twice.exit_code == 0, twice.output
    counts = read_manifest(tmp_path / "twice")["counts"]
    assert counts["documents"] == read_manifest(tmp_path / "once")["counts"]["documents"] == 12
    assert read_manifest(tmp_path / "twice")["input_hash"] == read_manifest(tmp_path / "once")["input_hash"]
    notes = [line for line in twice.output.splitlines() if "given more than once" in line]
    assert notes == [f"note: 2 source(s) given more than once, read once: {corpus}, {same}"]

    from revela.data.prepare import prepare

    summary = prepare([corpus, same], tmp_path / "api", 3, progress=False, quiet=True)
    assert summary["repeated_sources"] == [str(same)] and summary["documents"] == 12


@pytest.mark.parametrize("args, message", [
    (["--on-bad-record", "skipp"], "error: --on-bad-record: Input should be 'error' or 'skip' (got 'skipp')"),
    (["--grouping", "bm26"], "error: --grouping: Input should be 'adjacent', 'bm25' or 'random' (got 'bm26')"),
    (["--max-tokens", "2"], "error: --max-tokens: Input should be greater than or equal to 8 (got 2)"),
    (["--group-size", "2"], "error: --group-size: must be at least 3: each chunk's Sim is a softmax over the B-1 "
                            "other chunks of its group, so at B=2 it is always 1 and the retriever learns nothing "
                            "(got 2)"),
])
def test_bad_options_are_named_by_the_flag_typed(tmp_path, args, message):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    out = runner.invoke(app, ["prepare", "--source", corpus, "--out", tmp_path / "o", *args, "--no-progress"])
    assert out.exit_code == 2
    assert [line for line in out.output.splitlines() if line.strip()] == [message]


def test_a_bad_record_names_the_flag_on_the_command_line_and_the_key_in_a_config(tmp_path):
    from revela.data.config import DataConfig
    from revela.data.ingest import IngestError
    from revela.data.prepare import prepare_config

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": PROSE}) + "\n{not json\n")
    out = runner.invoke(app, ["prepare", "--source", bad, "--out", tmp_path / "o", "--no-progress"])
    assert out.exit_code == 2
    assert f"{bad}:2: malformed JSON" in out.output and "(pass --on-bad-record skip to skip and count such " \
        "records)" in out.output and "on_bad_record" not in out.output
    with pytest.raises(IngestError, match=r"bad\.jsonl:2: malformed JSON.*\(set data\.on_bad_record: skip to skip"):
        prepare_config(DataConfig(sources=[str(bad)], group_size=3), tmp_path / "o2", progress=False, quiet=True)


def test_records_take_their_kind_from_kind_or_language_fields(tmp_path):
    from revela.data.shards import read_manifest

    code = "def {n}(values):\n    total = 0\n    for v in values:\n        total += v * {n2}\n    return total\n"
    prose = "Rivers carry water from the hills down to the sea. Fish swim upstream in spring to lay eggs."
    records = ([{"id": f"c{i}", "text": code.format(n=f"f{i}", n2=i), "language": "Python"} for i in range(6)]
               + [{"id": f"p{i}", "text": prose, "kind": "prose"} for i in range(2)]
               + [{"id": f"u{i}", "text": prose} for i in range(2)])
    corpus = tmp_path / "coir.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    res = cli("prepare", "--source", corpus, "--out", tmp_path / "out", "--group-size", "3", "--no-progress")
    assert res.exit_code == 0, res.output
    counts = read_manifest(tmp_path / "out")["counts"]
    assert counts["documents_by_kind_from"] == {"default:prose": 2, "kind_field:prose": 2, "language_field:code": 6}
    assert counts["groups_by_kind"]["code"] == 2  # trained with code settings: no V-norm, no first-half view
    note = [line for line in res.output.splitlines() if "no `kind` or `language` field" in line]
    assert len(note) == 1 and "2 records" in note[0] and "--kind code" in note[0]

    import pyarrow as pa
    import pyarrow.parquet as pq

    from revela.data.ingest import SkipCounter, iter_documents, resolve_sources

    columns = ("id", "text", "kind", "language")  # missing fields become nulls
    pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in records]), tmp_path / "coir.parquet")
    docs = list(iter_documents(resolve_sources([tmp_path / "coir.parquet"])[0], SkipCounter()))
    assert [(d.kind, d.kind_from) for d in docs] == [("code", "language_field")] * 6 + [
        ("prose", "kind_field")] * 2 + [("prose", "default")] * 2
    forced = list(iter_documents(resolve_sources([corpus])[0], SkipCounter(), kind="code"))
    assert {(d.kind, d.kind_from) for d in forced} == {("code", "option")}

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": prose}) + "\n" + json.dumps({"text": prose, "kind": "recipe"}) + "\n")
    one_error_line(cli("prepare", "--source", bad, "--out", tmp_path / "o2", "--no-progress"),
                   f"{bad}:2", "`kind` must be")
    assert not (tmp_path / "o2").exists()


def test_prepare_with_no_chunks_says_what_it_skipped(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "blob.py").write_bytes(b"\x00\x01 binary")
    (tree / "notes.cfg").write_text("[a]\nb = c\n")
    (tree / "latin.py").write_bytes(b"x = '\xe9'\n")
    line = one_error_line(cli("prepare", "--source", tree, "--out", tmp_path / "o", "--no-progress"),
                          "no chunks")
    assert "read 0 documents, skipped 3 (binary=1, non_utf8=1, unsupported_extension=1)" in line
    one_error_line(cli("prepare", "--source", tree / "latin.py", "--out", tmp_path / "o", "--no-progress"),
                   f"{tree / 'latin.py'}:1: not valid UTF-8")
    assert not (tmp_path / "o").exists()


def test_prepare_leaves_its_own_output_out_of_the_sources(tmp_path):
    from revela.data.shards import read_manifest

    tree = tmp_path / "json"
    shutil.copytree(STDLIB / "json", tree, ignore=shutil.ignore_patterns("__pycache__"))
    args = ["prepare", "--source", tree, "--out", tree / "out", "--group-size", "4", "--no-progress"]
    first = cli(*args)
    assert first.exit_code == 0, first.output
    documents = read_manifest(tree / "out")["counts"]["documents"]
    again = cli(*args)
    assert again.exit_code == 0 and "up to date" in again.output, again.output
    forced = cli(*args, "--force")
    assert forced.exit_code == 0, forced.output
    manifest = read_manifest(tree / "out")
    assert manifest["counts"]["documents"] == documents and manifest["skips"]["counts"]["output_dir"] == 1
