"""`revela evaluate` on bad input: one line naming the cause, exit 2, nothing written; and the lengths it
evaluates at. Tiny random-init models (a training checkpoint and a plain backbone), run in process."""

import json

import pytest

from cli_checks import CORPUS, QRELS, QUERIES, cli, copy_checkpoint, data, models, one_error_line  # noqa: F401 (fixtures)
from revela.evaluation.beir import write_beir


def test_passages_are_evaluated_at_the_declared_length_for_model_and_backbone(models, data, tmp_path):
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


@pytest.mark.parametrize("option,value", [("--batch-size", "-1"), ("--batch-size", "0"), ("--max-queries", "0"),
                                          ("--max-queries", "-3"), ("--k", "0"), ("--max-length", "-1"),
                                          ("--passage-max-length", "1"), ("--num-actors", "0")])
def test_bad_numbers_are_refused_at_parse_time(models, data, tmp_path, option, value):
    res = cli("evaluate", "--model", models[0], "--dataset", data, "--output", tmp_path / "r.json", option, value)
    one_error_line(res, f"Invalid value for '{option}': must be at least", f"got {value}")
    assert list(tmp_path.iterdir()) == []


def test_reports_never_hold_nan():
    from revela.evaluation.checks import check_finite

    with pytest.raises(ValueError, match=r"non-finite values at datasets\.x\.ndcg_at_10, average\.mrr_at_10"):
        check_finite({"datasets": {"x": {"ndcg_at_10": float("nan"), "ci": [0.1, 0.2]}},
                      "average": {"mrr_at_10": float("inf")}})


def test_truncated_weights_are_named_by_evaluate_and_export(models, data, tmp_path):
    ckpt = copy_checkpoint(models[0], tmp_path / "ckpt")
    weights = ckpt / "retriever" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    res = cli("evaluate", "--model", ckpt, "--dataset", data, "--output", tmp_path / "r.json")
    one_error_line(res, f"{weights}: damaged safetensors file", "truncated")
    one_error_line(cli("export", ckpt, "--out", tmp_path / "exp"), f"{weights}: damaged safetensors file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_bad_index_and_output_folder_are_refused_before_encoding(models, data, tmp_path):
    one_error_line(cli("evaluate", "--model", models[0], "--dataset", data, "--output", tmp_path / "r.json",
                       "--index", "Bogus99"), "index 'Bogus99'", "could not parse index string")
    one_error_line(cli("evaluate", "--model", models[0], "--dataset", data, "--output", tmp_path / "r.json",
                       "--index-params", "nprobe=8"), "nprobe=8", "do not apply")
    folder = tmp_path / "existing"
    folder.mkdir()
    one_error_line(cli("evaluate", "--model", models[0], "--dataset", data, "--output", folder, "--bm25"),
                   "is an existing folder")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["existing"]  # no .tmp, no .runs/


def test_empty_dataset_files_and_incomplete_checkpoints_are_named(models, tmp_path):
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
