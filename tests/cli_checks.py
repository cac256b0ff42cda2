"""What the CLI tests of bad input share: run the real `revela` app in process, check that a refusal is exactly one
line with exit status 2, and check that nothing was written. Also two tiny model folders and a tiny BEIR set."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from revela.cli import app
from revela.evaluation.beir import write_beir
from revela.protocol import EncodingProtocol
from tiny import tiny_encoder, tokenizer

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
    """A three-document BEIR set (one passage far longer than 32 tokens)."""
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
