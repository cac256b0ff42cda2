"""Scoring a training checkpoint directory: flat metrics, the step, recording, incompatible checkpoints."""

import json
import shutil

import pytest

from revela.evaluation.actors import EVAL_FILE, score_checkpoint, validate_checkpoint
from revela.evaluation.beir import write_beir
from revela.evaluation.run import ModelLoadError, evaluate
from revela.evaluation.settings import EvalSettings

MODEL = "all-minilm-l6-v2"
CORPUS = {"d1": ("", "Cats are small domesticated felines that purr."),
          "d2": ("", "Python is a programming language with dynamic typing."),
          "d3": ("", "The stock market fell sharply after the announcement."),
          "d4": ("", "Bake sourdough bread at home with a starter."),
          "d5": ("", "Volcanoes erupt lava that cools into basalt.")}
QUERIES = {"q1": "which animal purrs", "q2": "dynamically typed language", "q3": "baking bread",
           "q4": "share prices dropped"}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d4": 1}, "q4": {"d3": 1}}


def save_checkpoint(directory, step):
    """A training-checkpoint layout: revela_checkpoint.json + retriever/ (weights, tokenizer, protocol)."""
    from revela.retriever import Retriever

    r = Retriever.load(MODEL)
    inner = directory / "retriever"
    r.backbone.save_pretrained(inner)
    r.tokenizer.save_pretrained(inner)
    r.protocol.save(inner)
    (directory / "revela_checkpoint.json").write_text(json.dumps({"step": step}))
    return directory


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("actors")
    data = write_beir(root / "dev", CORPUS, QUERIES, QRELS)
    data2 = write_beir(root / "dev2", CORPUS, {"q1": QUERIES["q1"]}, {"q1": QRELS["q1"]})
    return save_checkpoint(root / "checkpoint_000007", 7), data, data2


def test_score_checkpoint_flat_metrics(setup):
    ckpt, data, data2 = setup
    m = score_checkpoint(str(ckpt), [str(data), str(data2)])
    assert m["checkpoint_step"] == 7.0
    assert all(isinstance(v, float) for v in m.values())
    for metric in ("ndcg_at_10", "recall_at_100", "mrr_at_10", "map_at_100"):
        assert m[f"dev_{metric}"] == pytest.approx((m[f"dev/{metric}"] + m[f"dev2/{metric}"]) / 2)
    assert m["dev2/ndcg_at_10"] == 1.0
    # the checkpoint holds MiniLM's weights and protocol: it must score exactly like the plain model
    plain = evaluate(EvalSettings.of(model=MODEL, datasets=[data]), progress=False, show_table=False)["datasets"]["dev"]
    assert m["dev/ndcg_at_10"] == pytest.approx(plain["ndcg_at_10"])
    assert m["dev_eval_seconds"] > 0


def test_validation_fn_and_record(setup):
    from ray.train import Checkpoint

    ckpt, data, _ = setup
    m = validate_checkpoint(Checkpoint.from_directory(str(ckpt)), datasets=[str(data)], max_queries=2,
                            prefix="val", record=True)
    assert set(m) >= {"val_ndcg_at_10", "dev/ndcg_at_10", "checkpoint_step"}
    saved = json.loads((ckpt / EVAL_FILE).read_text())
    assert saved["metrics"] == m and saved["report"]["datasets"]["dev"]["num_queries"] == 2


def test_incompatible_checkpoints_are_clear_errors(setup, tmp_path):
    ckpt, data, _ = setup
    broken = tmp_path / "no_retriever"
    broken.mkdir()
    (broken / "revela_checkpoint.json").write_text('{"step": 3}')
    with pytest.raises(ModelLoadError, match="no retriever/ folder"):
        score_checkpoint(str(broken), [str(data)])
    mismatched = tmp_path / "mismatched"
    shutil.copytree(ckpt, mismatched)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(mismatched / "retriever")
    tok.add_tokens([f"<extra_{i}>" for i in range(50)])  # a tokenizer from another (bigger-vocab) model
    tok.save_pretrained(mismatched / "retriever")
    with pytest.raises(ModelLoadError, match="incompatible tokenizer and weights"):
        score_checkpoint(str(mismatched), [str(data)])
    with pytest.raises(ValueError, match="at least one"):
        score_checkpoint(str(ckpt), [])
