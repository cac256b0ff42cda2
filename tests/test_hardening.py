"""Issue 11: the last silent defaults, and every bad option a clear error (exit 2, one line, nothing written).

Each test is one numbered case of the issue. Models are tiny random-init folders (a BERT encoder saved as a
training checkpoint and as a plain model), run in process through the real `revela` app.
"""

import json
import os
import shutil
import sysconfig
from pathlib import Path

import pytest
from typer.testing import CliRunner

from revela.cli import app
from revela.evaluation.beir import write_beir
from revela.protocol import EncodingProtocol
from tiny import tiny_encoder, tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
runner = CliRunner()

CORPUS = {"d1": ("", "Cats purr when they are content and warm."),
          "d2": ("", "def read(path):\n    return open(path).read()"),
          "d3": ("", "The central bank raised interest rates again. " * 80)}  # far longer than 32 tokens
QUERIES = {"q1": "which animal purrs", "q2": "read a file", "q3": "interest rates"}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result, *needles: str) -> str:
    """The exit status is 2 and exactly one output line carries every needle."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.output.splitlines() if all(n in line for n in needles)]
    assert len(lines) == 1, result.output
    return lines[0]


def files(folder: Path) -> dict:
    """Every path under `folder` with its size and mtime: equal before and after means nothing was written."""
    return {p.relative_to(folder): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_beir(tmp_path_factory.mktemp("beir") / "tiny", CORPUS, QUERIES, QRELS)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(training checkpoint trained at 32 tokens, plain backbone whose own max length is 48)."""
    root = tmp_path_factory.mktemp("models")
    ckpt = root / "run" / "checkpoint_000004"
    for folder in (ckpt / "retriever", root / "backbone"):
        tiny_encoder().save_pretrained(folder)
        tokenizer().save_pretrained(folder)
    EncodingProtocol(pooling="mean", query_prefix="query: ", passage_prefix="passage: ",
                     max_length=32).save(ckpt / "retriever")
    (ckpt / "revela_checkpoint.json").write_text(json.dumps({"step": 4}))
    (root / "backbone" / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}))
    return ckpt, root / "backbone"


def copy_checkpoint(ckpt: Path, dest: Path) -> Path:
    shutil.copytree(ckpt, dest)
    return dest


# ------------------------------------------------------------------ 1. record kinds


def test_1_records_take_their_kind_from_kind_or_language_fields(tmp_path):
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


# ------------------------------------------------------------------ 2. evaluation length


def test_2_passages_are_evaluated_at_the_declared_length_for_model_and_backbone(models, data, tmp_path):
    """Issue 18 changed the default from 512 to the length a model declares (512 when it declares none): this
    checkpoint records none and names no backbone, so 512; the plain backbone declares 48."""
    from revela.evaluation.run import load_retriever

    ckpt, backbone = models
    out = tmp_path / "r.json"
    res = cli("evaluate", "--model", ckpt, "--baseline-model", backbone, "--dataset", data, "--output", out,
              "--no-progress")
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the report"))
    assert report["settings"]["passage_max_length"] is None and report["settings"]["max_length"] is None
    model_protocol = report["model"]["protocol"]
    baselines = report["datasets"]["tiny"]["baselines"]
    assert (model_protocol["max_length"], model_protocol["passage_max_length"]) == (32, 512)  # queries as trained
    assert baselines["backbone_same_protocol"]["protocol"] == model_protocol  # the control: encoded like the model
    native = baselines["backbone_native"]["protocol"]
    assert (native["max_length"], native["passage_max_length"]) == (48, 48)  # the same rule: its declared length
    from revela.config import RunConfig
    from revela.configbase import load_config
    from revela.train.driver import checkpoint_and_validation

    _, validation = checkpoint_and_validation(load_config(RunConfig, None, [f"eval.datasets=[{data}]"]))
    assert validation.task_config.fn_kwargs["passage_max_length"] is None  # in-training scoring: the same rule
    retriever = load_retriever(str(ckpt))
    long_doc = CORPUS["d3"][1]
    assert retriever.tokenize([long_doc], "passage")["input_ids"].shape[1] == 512
    assert retriever.tokenize([long_doc], "query")["input_ids"].shape[1] == 32


# ------------------------------------------------------------------ 3. eager attention


def test_3_eager_attention_is_supported_and_matches_sdpa():
    import torch

    from revela.config import RunConfig
    from revela.configbase import load_config
    from tiny import random_batch, tiny_revela

    assert load_config(RunConfig, None, ["model.lm.attn_implementation=eager"]).model.lm.attn_implementation == "eager"
    losses = []
    for impl in ("sdpa", "eager"):
        model = tiny_revela("gemma3", overrides={"lm": {"finetune": "full", "max_length": 32,
                                                         "attn_implementation": impl}})
        assert model.lm.config._attn_implementation == f"revela_{impl}"
        losses.append(model(random_batch()).loss)
    torch.testing.assert_close(losses[0], losses[1])


# ------------------------------------------------------------------ 4. evaluate's numeric options


@pytest.mark.parametrize("option,value", [("--batch-size", "-1"), ("--batch-size", "0"), ("--max-queries", "0"),
                                          ("--max-queries", "-3"), ("--k", "0"), ("--max-length", "-1"),
                                          ("--passage-max-length", "1"), ("--num-actors", "0")])
def test_4_8_bad_numbers_are_refused_at_parse_time(models, data, tmp_path, option, value):
    res = cli("evaluate", "--model", models[0], "--dataset", data, "--output", tmp_path / "r.json", option, value)
    one_error_line(res, f"Invalid value for '{option}': must be at least", f"got {value}")
    assert list(tmp_path.iterdir()) == []


def test_4_reports_never_hold_nan():
    from revela.evaluation.checks import check_finite

    with pytest.raises(ValueError, match=r"non-finite values at datasets\.x\.ndcg_at_10, average\.mrr_at_10"):
        check_finite({"datasets": {"x": {"ndcg_at_10": float("nan"), "ci": [0.1, 0.2]}},
                      "average": {"mrr_at_10": float("inf")}})


# ------------------------------------------------------------------ 5. export


def test_5_export_refuses_a_non_empty_folder_and_writes_uniform_permissions(models, tmp_path):
    ckpt, backbone = models
    out = tmp_path / "exported"
    assert cli("export", ckpt, "--out", out).exit_code == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert len(set(modes.values())) == 1, modes  # model.safetensors as readable as the rest
    before = files(out)
    one_error_line(cli("export", backbone, "--out", out), "not empty", "--overwrite")
    one_error_line(cli("export", ckpt, "--out", out, "--max-length", "-1"), "Invalid value for '--max-length': must be at least 2, got -1")
    assert files(out) == before  # the exported model is intact
    res = cli("export", backbone, "--out", out, "--overwrite", "--max-length", "64")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "sentence_bert_config.json").read_text()) == {"max_seq_length": 64}
    assert json.loads((out / "revela_protocol.json").read_text())["query_prefix"] == ""  # the backbone's now
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or old folders left

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    one_error_line(cli("export", ckpt, "--out", notes, "--overwrite"), "holds no model")
    assert (notes / "todo.txt").read_text() == "mine"


# ------------------------------------------------------------------ 6. resume after a lost checkpoint


def write_snapshot(run_dir: Path, steps: list[int]) -> None:
    """A run folder as Ray Train V2 leaves it: complete checkpoints and its snapshot (Ray's own schema)."""
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (_CheckpointManagerState,
                                                                                 _TrainingResultState)

    results = []
    for step in steps:
        folder = run_dir / f"checkpoint_{step:06d}"
        folder.mkdir(parents=True)
        (folder / "revela_checkpoint.json").write_text(json.dumps({"step": step}))
        results.append(_TrainingResultState(checkpoint_dir_name=folder.name, metrics={"step": step}))
    state = _CheckpointManagerState(
        checkpoint_results=results, checkpoint_report_indices=[2 * s for s in steps],
        latest_checkpoint_result=results[-1], pending_training_results=[], pending_validation_specs=[],
        current_report_index=2 * steps[-1], validated_checkpoint_dir_names=[],
        timed_out_validation_checkpoint_dir_names=[], failed_validation_checkpoint_dir_names=[])
    (run_dir / "checkpoint_manager_snapshot.json").write_text(state.model_dump_json())


def test_6_a_lost_newest_checkpoint_resumes_from_the_newest_complete_one(tmp_path):
    from ray.train import CheckpointConfig
    from ray.train.v2._internal.exceptions import CheckpointManagerInitializationError
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import CheckpointManager
    from ray.train.v2._internal.execution.storage import StorageContext

    from revela.train.resume import repair_snapshot

    run_dir = tmp_path / "r1"
    write_snapshot(run_dir, [2, 4, 6])
    shutil.rmtree(run_dir / "checkpoint_000006")  # lost with a disk
    (run_dir / "checkpoint_000004" / "revela_checkpoint.json").unlink()  # and one half-written
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="r1")
    with pytest.raises(CheckpointManagerInitializationError):  # what Ray does by itself
        CheckpointManager(CheckpointConfig(num_to_keep=3), storage)
    assert repair_snapshot(run_dir, "r1") == ["checkpoint_000004", "checkpoint_000006"]
    manager = CheckpointManager(CheckpointConfig(num_to_keep=3), storage)  # Ray's own reader accepts it
    assert manager.latest_checkpoint_result.checkpoint.path.endswith("checkpoint_000002")
    assert (run_dir / "checkpoint_000002").is_dir()  # the intact checkpoint is kept


def test_6_no_complete_checkpoint_left_is_one_line_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "r2"
    write_snapshot(run_dir, [2])
    shutil.rmtree(run_dir / "checkpoint_000002")
    (run_dir / "revela_run.json").write_text(json.dumps({"config_hash": "x", "config": {}}))
    (run_dir / "revela_status.json").write_text(json.dumps({"status": "finished", "step": 2}))
    before = files(run_dir)
    res = cli("train", "name=r2", f"ray.storage_path={tmp_path}", "--resume")
    line = one_error_line(res, "checkpoint_000002", "missing")
    assert "--overwrite" in line
    assert files(run_dir) == before


# ------------------------------------------------------------------ 7. run names


@pytest.mark.parametrize("name", ["/tmp/x", "..", "a/b", "../x", "."])
def test_7_a_run_name_must_be_one_safe_path_component(tmp_path, name):
    res = cli("config", f"name={name}")
    one_error_line(res, "name:", "not a safe name")
    res = cli("train", f"name={name}", f"ray.storage_path={tmp_path}", "--overwrite")
    one_error_line(res, "name:", "not a safe name")
    assert list(tmp_path.iterdir()) == []


def test_7_overwrite_never_removes_a_folder_outside_the_storage_path(tmp_path):
    from revela.config import RunConfig
    from revela.train.driver import claim_run_dir

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "revela_run.json").write_text("{}")
    storage = tmp_path / "runs"
    storage.mkdir()
    os.symlink(outside, storage / "linked")
    one_error_line(cli("train", "name=linked", f"ray.storage_path={storage}", "--overwrite"), "symbolic link")
    assert (outside / "revela_run.json").is_file()
    unsafe = RunConfig().model_copy(update={"name": ".."})  # model_copy skips validation: the driver checks again
    with pytest.raises(ValueError, match="not a safe name"):
        claim_run_dir(unsafe.model_copy(update={"ray": unsafe.ray.model_copy(update={"storage_path": str(storage)})}),
                      "overwrite")
    assert storage.is_dir()


# ------------------------------------------------------------------ 8. broken models, index, output, export sources


def test_8_truncated_weights_are_named_by_evaluate_and_export(models, data, tmp_path):
    ckpt = copy_checkpoint(models[0], tmp_path / "ckpt")
    weights = ckpt / "retriever" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    res = cli("evaluate", "--model", ckpt, "--dataset", data, "--output", tmp_path / "r.json")
    one_error_line(res, f"{weights}: damaged safetensors file", "truncated")
    one_error_line(cli("export", ckpt, "--out", tmp_path / "exp"), f"{weights}: damaged safetensors file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_8_bad_index_and_output_folder_are_refused_before_encoding(models, data, tmp_path):
    one_error_line(cli("evaluate", "--model", models[0], "--dataset", data, "--output", tmp_path / "r.json",
                       "--index", "Bogus99"), "index 'Bogus99'", "could not parse index string")
    one_error_line(cli("evaluate", "--model", models[0], "--dataset", data, "--output", tmp_path / "r.json",
                       "--index-params", "nprobe=8"), "nprobe=8", "do not apply")
    folder = tmp_path / "existing"
    folder.mkdir()
    one_error_line(cli("evaluate", "--model", models[0], "--dataset", data, "--output", folder, "--bm25"),
                   "is an existing folder")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["existing"]  # no .tmp, no .runs/


def test_8_export_from_non_models_and_onto_files(models, tmp_path):
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("hello")
    one_error_line(cli("export", not_a_model, "--out", tmp_path / "a"), "no config.json")
    one_error_line(cli("export", tmp_path / "missing", "--out", tmp_path / "b"), "no such model folder")
    target = tmp_path / "file.bin"
    target.write_bytes(b"keep")
    one_error_line(cli("export", models[0], "--out", target), "exists and is a file")
    assert target.read_bytes() == b"keep" and sorted(p.name for p in tmp_path.iterdir()) == ["file.bin", "notes"]


# ------------------------------------------------------------------ 9. messages that name the cause


def test_9_empty_dataset_files_and_incomplete_checkpoints_are_named(models, tmp_path):
    empty_queries = write_beir(tmp_path / "eq", CORPUS, QUERIES, QRELS)
    (empty_queries / "queries.jsonl").write_text("")
    one_error_line(cli("evaluate", "--dataset", empty_queries, "--output", tmp_path / "r.json", "--bm25"),
                   "queries.jsonl: empty")
    empty_corpus = write_beir(tmp_path / "ec", CORPUS, QUERIES, QRELS)
    (empty_corpus / "corpus.jsonl").write_text("\n")
    one_error_line(cli("evaluate", "--dataset", empty_corpus, "--output", tmp_path / "r.json", "--bm25"),
                   "corpus.jsonl: empty")
    ckpt = copy_checkpoint(models[0], tmp_path / "half")
    (ckpt / "revela_checkpoint.json").unlink()
    one_error_line(cli("evaluate", "--model", ckpt, "--dataset", empty_queries, "--output", tmp_path / "r.json"),
                   "incomplete training checkpoint")
    assert not (tmp_path / "r.json").exists()


def test_9_prepare_with_no_chunks_says_what_it_skipped(tmp_path):
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


# ------------------------------------------------------------------ 10. prepare's output inside its source


def test_10_prepare_leaves_its_own_output_out_of_the_sources(tmp_path):
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
