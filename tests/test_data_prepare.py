"""`revela prepare` (revela.data.prepare): a source given twice is read once (and reported), and its errors name
the flag the user typed (`--on-bad-record skip`), while the same errors from a run config name the config key."""

import json

import pytest
from typer.testing import CliRunner

from revela.cli import app
from revela.data.shards import read_manifest

runner = CliRunner()
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
