"""The untrained control is encoded like the checkpoint (issue 16, item 1), and evaluation lengths default to the
length a model declares (issue 18): `revela.evalprotocol`, `evaluate`'s backbone rows, the sweep's baselines,
exports, and MiniLM's default evaluation against stock sentence-transformers."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from revela.cli import app
from revela.evaluation.beir import write_beir
from revela.protocol import EncodingProtocol
from tiny import MINILM_DIR, random_batch, tiny_encoder, tiny_lm, tokenizer

LONG = "The central bank raised interest rates again, and markets moved on the news. " * 40  # ~600 tokens
CORPUS = {"d1": ("", "Cats purr when they are content and warm."),
          "d2": ("", "def read(path):\n    return open(path).read()"),
          "d3": ("", LONG),
          "d4": ("", "Volcanoes erupt lava that cools into basalt rock. " + LONG),
          "d5": ("", "Sourdough bread rises slowly with a starter. " * 30)}
QUERIES = {"q1": "which animal purrs", "q2": "read a file", "q3": "interest rates", "q4": "lava and basalt",
           "q5": "baking bread"}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}, "q4": {"d4": 1}, "q5": {"d5": 1}}
PREFIXES = {"query_prefix": "query: ", "passage_prefix": "passage: "}


def save_folder(model, folder: Path, declared: int | None = None) -> Path:
    model.save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    if declared:
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": declared}))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_beir(tmp_path_factory.mktemp("beir") / "tiny", CORPUS, QUERIES, QRELS)


@pytest.fixture(scope="module")
def lr0_checkpoint(tmp_path_factory):
    """A checkpoint through the real path: one optimizer step under warmup (lr 0, the weights are the backbone's),
    saved by `save_checkpoint`; trained with `query: `/`passage: ` at 32 tokens from a backbone declaring 48."""
    from revela.config import RunConfig
    from revela.model import RevelaModel
    from revela.train.checkpoint import save_checkpoint
    from revela.train.loop import Trainer

    root = tmp_path_factory.mktemp("lr0")
    backbone = save_folder(tiny_encoder(), root / "backbone", declared=48)
    lm = save_folder(tiny_lm(), root / "lm")
    cfg = RunConfig.model_validate({
        "name": "lr0", "model": {"retriever": {"name": str(backbone), "pooling": "mean", "max_length": 32,
                                               "finetune": "full", **PREFIXES},
                                 "lm": {"name": str(lm), "finetune": "full", "max_length": 32},
                                 "objective": {"temperature": 0.05}},
        "train": {"max_steps": 1, "warmup_steps": 4, "lr": 1e-3}})
    from transformers import AutoModel, AutoModelForCausalLM

    model = RevelaModel.from_config(cfg.model, lm_model=AutoModelForCausalLM.from_pretrained(lm),
                                    retriever_backbone=AutoModel.from_pretrained(backbone),
                                    tokenizers=(tokenizer(), tokenizer()))
    trainer = Trainer(model, cfg.train, torch.device("cpu"))
    assert trainer.train_step([random_batch()])["lr"] == 0.0  # the step under warmup ran at lr 0
    ckpt = save_checkpoint(root / "run" / "checkpoint_000001", model, trainer, cfg)
    return ckpt, backbone, cfg


def test_an_lr0_checkpoint_scores_exactly_its_same_protocol_control(lr0_checkpoint, data, tmp_path):
    ckpt, backbone, _ = lr0_checkpoint
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["evaluate", "--model", str(ckpt), "--dataset", str(data), "--output", str(out),
                                   "--no-progress"])  # a checkpoint brings its backbone, scored both ways
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    entry = report["datasets"]["tiny"]
    same, native = entry["baselines"]["backbone_same_protocol"], entry["baselines"]["backbone_native"]
    assert same["model"] == native["model"] == str(backbone)
    model_protocol = report["model"]["protocol"]
    assert same["protocol"] == model_protocol
    assert (model_protocol["query_prefix"], model_protocol["max_length"], model_protocol["passage_max_length"]) == (
        "query: ", 32, 48)
    assert (native["protocol"]["query_prefix"], native["protocol"]["max_length"],
            native["protocol"]["passage_max_length"]) == ("", 48, 48)  # its own: no prefixes, its declared length
    # untouched weights under the same protocol: the training effect is exactly zero, query by query
    assert same["ndcg_at_10_per_query"] == entry["ndcg_at_10_per_query"]
    assert same["model_minus_this"]["delta"] == 0 and same["model_minus_this"]["verdict"] == "none"
    assert "untrained" in res.output and "model's protocol" in res.output and "its own protocol" in res.output
    runs = tmp_path / "r.runs"
    assert (runs / "tiny.backbone_same_protocol.trec").is_file() and (runs / "tiny.backbone_native.trec").is_file()
    recorded = EncodingProtocol.load(ckpt / "retriever")
    assert recorded.passage_max_length == 48  # the checkpoint records the length its backbone declares


def test_sweep_baselines_are_scored_like_the_trials_checkpoints(lr0_checkpoint, data, tmp_path):
    from revela.evaluation.actors import EVAL_FILE, score_checkpoint
    from revela.tuning.prepare import baseline_protocol, score_backbone
    from revela.train import read_jsonl

    ckpt, backbone, cfg = lr0_checkpoint
    run = cfg.model_dump()
    protocol = baseline_protocol(run)
    assert protocol == EncodingProtocol.load(ckpt / "retriever").model_dump()  # known before any checkpoint exists
    kwargs = {"max_queries": 4, "batch_size": 8, "max_length": None, "passage_max_length": None}
    scored = score_backbone(str(backbone), [str(data)], protocol, **kwargs)
    history = tmp_path / "dev_scores.jsonl"
    checkpoint = score_checkpoint(str(ckpt), [str(data)], record=True, history_file=str(history), **kwargs)
    assert all(isinstance(v, float) for v in checkpoint.values())  # what Ray Train gets stays flat
    (line,) = read_jsonl(history)
    assert line["per_query"] == json.loads((ckpt / EVAL_FILE).read_text())["per_query"]  # kept for paired tests
    same, native = scored["same_protocol"], scored["native"]
    assert same["per_query"] == line["per_query"]  # the same sampled queries, the same values: lr 0
    assert same["metrics"]["dev_ndcg_at_10"] == checkpoint["dev_ndcg_at_10"]
    assert same["protocol"]["passage_max_length"] == 48 and native["protocol"]["query_prefix"] == ""
    assert len(same["per_query"]["tiny"]) == 4 and set(same["per_query"]["tiny"]) == set(native["per_query"]["tiny"])


def test_default_lengths_follow_what_the_model_declares(tmp_path):
    from revela.evalprotocol import resolve_evaluation_protocol

    plain = save_folder(tiny_encoder(), tmp_path / "plain", declared=48)
    undeclared = save_folder(tiny_encoder(), tmp_path / "undeclared")
    p = resolve_evaluation_protocol(str(plain))
    assert (p.max_length, p.passage_max_length) == (48, 48)
    p = resolve_evaluation_protocol(str(undeclared))
    assert (p.max_length, p.passage_max_length) == (512, 512)  # nothing declared: 512, as the authors evaluate
    assert resolve_evaluation_protocol(str(plain), passage_max_length=300).passage_max_length == 300  # override
    assert resolve_evaluation_protocol(str(plain), passage_max_length=9999).passage_max_length == 512  # positions

    def checkpoint(name: str, marker: dict, recorded: int | None) -> str:
        folder = tmp_path / name
        save_folder(tiny_encoder(), folder / "retriever")
        EncodingProtocol(pooling="mean", max_length=32, passage_max_length=recorded, **PREFIXES).save(
            folder / "retriever")
        (folder / "revela_checkpoint.json").write_text(json.dumps(marker))
        return str(folder)

    p = resolve_evaluation_protocol(checkpoint("recorded", {"step": 1}, 64))
    assert (p.max_length, p.passage_max_length, p.query_prefix) == (32, 64, "query: ")
    # saved before checkpoints recorded it: its backbone's declared length, else 512
    assert resolve_evaluation_protocol(checkpoint("old", {"step": 1, "retriever": str(plain)}, None)
                                       ).passage_max_length == 48
    assert resolve_evaluation_protocol(checkpoint("older", {"step": 1}, None)).passage_max_length == 512


def test_minilm_default_evaluation_is_stock_sentence_transformers(data):
    """all-MiniLM-L6-v2 declares max_seq_length 256; by default passages are cut there, as sentence-transformers
    does (at 512 the long passages' embeddings differ, and so did BEIR scores, issue 18)."""
    from sentence_transformers import SentenceTransformer

    from revela.evaluation.beir import load_beir
    from revela.evaluation.metrics import aggregate, per_query
    from revela.evaluation.run import evaluate, load_retriever
    from revela.evaluation.settings import EvalSettings

    ds = load_beir(data)
    ours = load_retriever("all-minilm-l6-v2")
    assert (ours.protocol.max_length, ours.protocol.passage_max_length, ours.protocol.query_prefix) == (256, 256, "")
    stock = SentenceTransformer(MINILM_DIR, device="cpu")
    docs_st, queries_st = stock.encode(ds.doc_texts()), stock.encode(ds.query_texts())
    docs = ours.encode(ds.doc_texts(), "passage")
    assert np.abs(docs - docs_st).max() < 1e-5
    assert np.abs(ours.encode(ds.query_texts(), "query") - queries_st).max() < 1e-5
    scores = queries_st @ docs_st.T
    run = {q: {d: float(s) for d, s in zip(ds.doc_ids, row)} for q, row in zip(ds.query_ids, scores)}
    report = evaluate(EvalSettings.of(model="all-minilm-l6-v2", datasets=[data]), progress=False, show_table=False)
    expected = aggregate(per_query(ds.qrels, run))["ndcg_at_10"]
    assert report["datasets"]["tiny"]["ndcg_at_10"] == pytest.approx(expected)
    assert report["model"]["protocol"]["passage_max_length"] == 256 and report["settings"]["passage_max_length"] is None


def test_export_carries_the_evaluation_length(lr0_checkpoint, tmp_path):
    from sentence_transformers import SentenceTransformer

    from revela.evaluation.run import load_retriever

    ckpt, _, _ = lr0_checkpoint
    out = tmp_path / "export"
    res = CliRunner().invoke(app, ["export", str(ckpt), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "sentence_bert_config.json").read_text()) == {"max_seq_length": 48}  # not the 32 trained
    exported = EncodingProtocol.load(out)
    assert (exported.max_length, exported.passage_max_length) == (32, 48)
    ours = load_retriever(str(ckpt)).encode([LONG], "passage")
    st = SentenceTransformer(str(out), device="cpu").encode([LONG], prompt_name="document")
    assert np.abs(ours - st).max() < 1e-5  # sentence-transformers users encode passages as `revela evaluate` does


def test_the_same_dataset_twice_is_a_duplicate_not_a_name_clash(data, tmp_path):
    res = CliRunner().invoke(app, ["evaluate", "--bm25", "--dataset", str(data), "--dataset", str(data) + "/",
                                   "--output", str(tmp_path / "x.json")])
    assert res.exit_code == 2
    assert "is given twice" in res.output and "give each dataset once" in res.output
    assert "rename" not in res.output and not (tmp_path / "x.json").exists()
