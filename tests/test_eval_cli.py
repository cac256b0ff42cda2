"""`evaluate` end to end: the report JSON, TREC run files that re-score to the same numbers, and the CLI."""

import json
import subprocess
import sys

import pytest
import pytrec_eval
import typer
from typer.testing import CliRunner

from revela.evaluation.beir import write_beir
from revela.evaluation.cli import register
from revela.evaluation.run import SCHEMA, evaluate
from revela.evaluation.settings import EvalSettings

MODEL = "all-minilm-l6-v2"
CORPUS = {
    "d1": ("Cats", "Cats are small domesticated felines that purr when content."),
    "d2": ("Python", "Python is a programming language with dynamic typing and garbage collection."),
    "d3": ("", "The stock market fell sharply today after the central bank announcement."),
    "d4": ("Bread", "A recipe for baking sourdough bread at home with a starter."),
    "d5": ("", "def read_file(path):\n    with open(path) as f:\n        return f.read()"),
    "d6": ("Volcanoes", "Lava flows from an erupting volcano and cools into basalt rock."),
}
QUERIES = {"q1": "which animal purrs", "q2": "language with dynamic types", "q3": "how to bake bread",
           "q4": "read the contents of a file", "q5": "why did share prices drop"}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d4": 1}, "q4": {"d5": 1}, "q5": {"d3": 1}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return write_beir(root / "tiny", CORPUS, QUERIES, QRELS), write_beir(root / "tiny2", CORPUS, QUERIES,
                                                                          {"q1": {"d1": 1}, "q2": {"d2": 1}})


def read_trec(path):
    run = {}
    for line in open(path):
        qid, q0, did, rank, score, tag = line.split()
        assert q0 == "Q0"
        run.setdefault(qid, {})[did] = float(score)
    return run


def test_evaluate_writes_report_and_rescorable_runs(tiny, tmp_path, capsys):
    out = tmp_path / "res" / "minilm.json"
    report = evaluate(EvalSettings.of(model=MODEL, datasets=[tiny[0], tiny[1]], output=out, bm25=True), progress=False)
    assert json.loads(out.read_text()) == report
    assert report["schema"] == SCHEMA and report["model"]["checkpoint_step"] is None
    assert report["model"]["protocol"]["pooling"] == "mean" and report["model"]["protocol"]["max_length"] == 256
    assert set(report["versions"]) >= {"torch", "transformers", "faiss", "pytrec-eval-terrier", "ray", "bm25s"}
    assert report["wall_time_s"] > 0 and report["settings"]["encoder"] == "local"
    entry = report["datasets"]["tiny"]
    for key in ("ndcg_at_10", "recall_at_100", "mrr_at_10", "map_at_100", "main_score", "num_queries", "num_docs",
                "content_hash"):
        assert key in entry
    assert entry["num_queries"] == 5 and entry["num_docs"] == 6 and entry["main_score"] == entry["ndcg_at_10"]
    assert entry["ndcg_at_10"] > 0.9  # MiniLM gets these obvious pairs right
    assert set(entry["baselines"]) == {"bm25", "bm25_ident_split"}
    assert report["datasets"]["tiny2"]["num_queries"] == 2
    # the TREC files re-score with plain pytrec_eval to the numbers in the report
    for run_file, scores in ((entry["run_file"], entry), (entry["baselines"]["bm25"]["run_file"],
                                                          entry["baselines"]["bm25"])):
        run = read_trec(run_file)
        assert set(run) == set(QUERIES) and all(len(r) == 6 for r in run.values())
        res = pytrec_eval.RelevanceEvaluator(QRELS, {"ndcg_cut.10"}).evaluate(run)
        assert sum(r["ndcg_cut_10"] for r in res.values()) / 5 == pytest.approx(scores["ndcg_at_10"])
    table = capsys.readouterr().out
    assert "nDCG@10" in table and "bm25_ident_split" in table and "tiny2" in table


def test_baseline_backbone_and_max_length(tiny, tmp_path):
    report = evaluate(EvalSettings.of(model=MODEL, datasets=[tiny[0]], baseline_model=MODEL, max_length=8),
                      progress=False, show_table=False)
    entry = report["datasets"]["tiny"]
    assert report["model"]["protocol"]["max_length"] == 8
    for key in ("backbone_same_protocol", "backbone_native"):  # one encode: the protocols are the same here
        base = entry["baselines"][key]
        assert base["model"] == MODEL and base["protocol"] == report["model"]["protocol"]
        assert base["ndcg_at_10"] == pytest.approx(entry["ndcg_at_10"])
        assert base["model_minus_this"]["delta"] == 0 and base["model_minus_this"]["verdict"] == "none"
    assert entry["run_file"] is None  # no output, no files


def test_bm25_only_and_duplicate_names(tiny, tmp_path):
    report = evaluate(EvalSettings.of(datasets=[tiny[0]], output=tmp_path / "bm25.json", bm25=True), show_table=False)
    assert report["model"] is None
    assert report["datasets"]["tiny"]["ndcg_at_10"] == report["datasets"]["tiny"]["baselines"]["bm25"]["ndcg_at_10"]
    with pytest.raises(ValueError, match="is given twice .* give each dataset once"):  # a duplicate, not a name clash
        evaluate(EvalSettings.of(datasets=[tiny[0], tiny[0]], bm25=True), show_table=False)
    other = tmp_path / "elsewhere" / "tiny"
    write_beir(other, CORPUS, QUERIES, QRELS)
    with pytest.raises(ValueError, match="share the name"):  # two folders, one name
        evaluate(EvalSettings.of(datasets=[tiny[0], other], bm25=True), show_table=False)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        EvalSettings.of(datasets=[tiny[0]])


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    register(app)
    return app


def test_cli_evaluate(app, tiny, tmp_path):
    out = tmp_path / "cli.json"
    res = CliRunner().invoke(app, ["evaluate", "--model", MODEL, "--dataset", str(tiny[0]), "--output", str(out),
                                   "--bm25", "--batch-size", "4", "--max-length", "64", "--no-progress"])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["settings"]["batch_size"] == 4 and report["model"]["protocol"]["max_length"] == 64
    assert (tmp_path / "cli.runs" / "tiny.trec").is_file() and (tmp_path / "cli.runs" / "tiny.bm25.trec").is_file()
    assert "nDCG@10" in res.output and f"wrote {out}" in res.output


def test_cli_bad_input_exits_2_with_reason(app, tiny, tmp_path):
    broken = write_beir(tmp_path / "broken", CORPUS, QUERIES, QRELS)
    with open(broken / "corpus.jsonl", "a") as f:
        f.write("{not json\n")
    res = CliRunner().invoke(app, ["evaluate", "--dataset", str(broken), "--output", str(tmp_path / "x.json"),
                                   "--bm25"])
    assert res.exit_code == 2 and "corpus.jsonl:7: not valid JSON" in res.output
    res = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path), "--dataset", str(tiny[0]),
                                   "--output", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "no config.json" in res.output
    res = CliRunner().invoke(app, ["build-evals", "--out", str(tmp_path / "ev"), "--which", "pyfaq",
                                   "--html-root", str(tmp_path / "nohtml")])
    assert res.exit_code == 2 and "python3.11-doc" in res.output


def test_in_process_evaluation_never_imports_ray(tiny, tmp_path):
    """`--encoder local` (and `auto` without a running Ray) encodes in this process: Ray is not even imported."""
    code = ("import sys; from revela.cli import app; "
            "app(sys.argv[1:], standalone_mode=False); "
            "print('ray imported' if 'ray' in sys.modules else 'no ray')")
    out = tmp_path / "local.json"
    res = subprocess.run([sys.executable, "-c", code, "evaluate", "--model", MODEL, "--dataset", str(tiny[0]),
                          "--output", str(out), "--encoder", "local", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("no ray"), res.stdout[-2000:]
    assert json.loads(out.read_text())["settings"]["encoder"] == "local"
