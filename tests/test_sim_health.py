"""Sim health (revela.train.sim_health): the verdict, the console's one warning line, the report's record."""

import io
import json
import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from revela.train.console import RunConsole
from revela.train.sim_health import HEALTH_WINDOW, SimHealthWatch, sim_health
from revela.train.temperature import Calibration

KEYS = {"status", "mean_entropy_fraction", "temperature", "message"}


def rows(*fractions, tau=1e-4, start=1):
    return [{"step": start + i, "wall_time": 100.0 + i, "loss": 3.0, "sim_entropy": f * math.log(7),
             "sim_entropy_fraction": f, "temperature": tau} for i, f in enumerate(fractions)]


def test_verdicts_over_the_last_window():
    one_hot = sim_health(rows(*[0.01] * 25))
    assert set(one_hot) == KEYS and one_hot["status"] == "one-hot" and one_hot["temperature"] == 1e-4
    assert one_hot["mean_entropy_fraction"] == pytest.approx(0.01)
    assert "temperature: auto" in one_hot["message"] and "0.0001" in one_hot["message"]
    assert sim_health(rows(*[0.98] * 5, tau=5.0))["status"] == "uniform"
    assert sim_health(rows(0.5, 0.7, 0.6))["status"] == "ok"
    # only the last HEALTH_WINDOW logged steps count: a run that left the one-hot regime is healthy again
    recovered = rows(*[0.01] * 30 + [0.6] * HEALTH_WINDOW)
    assert sim_health(recovered)["status"] == "ok"
    assert sim_health(rows(*[0.6] * 30 + [0.01] * HEALTH_WINDOW))["status"] == "one-hot"
    unknown = sim_health([], temperature=0.02)
    assert unknown["status"] == "unknown" and unknown["mean_entropy_fraction"] is None and unknown["temperature"] == 0.02
    # B=2 logs no fraction (NaN); rows from before the fraction existed: from sim_entropy and B
    assert sim_health(rows(float("nan")))["status"] == "unknown"
    old = [{"step": 1, "sim_entropy": 0.01, "temperature": 1e-4}]
    assert sim_health(old, group_size=8)["status"] == "one-hot"
    control = sim_health(rows(1.0, 1.0), sim="uniform")
    assert control["status"] == "uniform" and "control" in control["message"]
    json.dumps(one_hot)  # goes into report.json and the trial record as it is


def test_the_watch_warns_once():
    watch = SimHealthWatch()
    lines = [watch.add(r) for r in rows(*[0.01] * 60)]
    assert [i for i, line in enumerate(lines) if line] == [HEALTH_WINDOW - 1] and watch.finish() is None
    healthy = SimHealthWatch()
    assert not any(healthy.add(r) for r in rows(*[0.6] * 40)) and healthy.finish() is None
    short = SimHealthWatch()  # a run shorter than the window: the verdict over all of it, at its end
    assert not any(short.add(r) for r in rows(0.01, 0.02))
    assert short.finish().startswith("Sim health: Sim is one-hot")
    control = SimHealthWatch(sim="uniform")
    assert not any(control.add(r) for r in rows(*[1.0] * 30)) and control.finish() is None


def test_console_prints_tau_and_one_warning(tmp_path):
    out = io.StringIO()
    with RunConsole(tmp_path, max_steps=30, stream=out, interactive=False, poll_s=3600) as console:
        Calibration(0.0123, 0.70, 0.7, 8, 16).save(tmp_path)
        with open(tmp_path / "metrics.jsonl", "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows(*[0.003] * 30, tau=0.0123)))
        console.poll()
    text = out.getvalue()
    assert "temperature: auto -> 0.0123 (mean Sim entropy 70% of ln(B-1), target 70%, on the first 8 groups of B=16)" \
        in text
    warnings = [line for line in text.splitlines() if line.startswith("Sim health:")]
    assert len(warnings) == 1 and "0.0123" in warnings[0] and "temperature: auto" in warnings[0], text
    assert "Warning" not in text  # the Ray tests' false-alarm check
    assert "Sim H 0.006 (0%)" in text


def test_console_announces_a_fixed_tau_once(tmp_path):
    out = io.StringIO()
    with RunConsole(tmp_path, max_steps=2, stream=out, interactive=False, poll_s=3600) as console:
        Calibration(1e-4, None, 0.7, 0, 0, "config").save(tmp_path)
        for _ in range(3):
            console.poll()
    assert out.getvalue().splitlines() == ["temperature 0.0001 (from the config)"]


# ------------------------------------------------------------------- a two-step run with the real SmolLM2 retriever

@pytest.fixture(scope="module")
def smollm2_run():
    """SmolLM2-135M (the offline asset) as the retriever with EOS pooling, a tiny LM on its vocabulary, and real
    code groups of 4 chunks; `run(temperature, tmp)` trains two steps the way the worker does (tau set up first,
    the calibration groups trained on) and follows them with the console. Returns (console output, rows)."""
    from transformers import AutoModel, AutoTokenizer

    from revela.assets import resolve_model
    from revela.batch import GroupTokenizer
    from revela.config import ModelConfig, TrainConfig
    from revela.data.prepare import prepare
    from revela.data.shards import read_groups
    from revela.model import RevelaModel
    from revela.train.loop import Trainer
    from revela.train.temperature import CALIBRATION_GROUPS, setup_temperature
    from tiny import tiny_lm

    path = resolve_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(path)

    def run(temperature, tmp: Path):
        # small groups of short chunks: the 135M retriever costs ~0.3 GFLOP per token on 2 shared CPU cores
        prepare([str(Path(sysconfig.get_paths()["stdlib"]) / "json")], tmp / "groups", group_size=4,
                grouping="adjacent", max_words=9, max_tokens=12, tokenizer=tok, progress=False, quiet=True)
        cfg = ModelConfig.model_validate({
            "retriever": {"name": "smollm2-135m", "pooling": "eos", "finetune": "lora", "max_length": 18,
                          "lora": {"r": 4, "alpha": 8}},
            "lm": {"finetune": "full", "max_length": 12}, "objective": {"temperature": temperature}})
        torch.manual_seed(0)
        backbone = AutoModel.from_pretrained(path, dtype=torch.float32)  # fresh: LoRA is injected into it
        model = RevelaModel.from_config(cfg, lm_model=tiny_lm(vocab=len(tok)), retriever_backbone=backbone,
                                        tokenizers=(tok, tok))
        tokenize = GroupTokenizer(tok, tok, model.retriever.protocol, 12, False)
        stream = [{k: torch.from_numpy(np.asarray(v)) for k, v in tokenize(list(texts)).items()}
                  for texts in read_groups(tmp / "groups").column("texts").to_pylist()]
        first = stream[:CALIBRATION_GROUPS] if temperature == "auto" else []
        calibration = setup_temperature(model, cfg.objective.target_entropy, 0, first)
        trainer = Trainer(model, TrainConfig(max_steps=2, warmup_steps=0, lr=1e-4), torch.device("cpu"))
        out = io.StringIO()
        with RunConsole(tmp, max_steps=2, stream=out, interactive=False, poll_s=3600):
            calibration.save(tmp)
            logged = []
            for batch in stream[:2]:  # the calibration groups are trained on, as in the worker
                metrics = trainer.train_step([batch])
                logged.append({**metrics, "temperature": model.temperature, "wall_time": 0.0})
                with open(tmp / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(logged[-1]) + "\n")
        return out.getvalue(), logged

    return run


@pytest.mark.slow
def test_two_step_smollm2_run_warns_at_the_papers_tau_and_not_with_auto(smollm2_run, tmp_path):
    text, logged = smollm2_run(1e-4, tmp_path / "paper")
    warnings = [line for line in text.splitlines() if line.startswith("Sim health:")]
    assert len(warnings) == 1, text
    assert "Sim is one-hot" in warnings[0] and "temperature 0.0001" in warnings[0] \
        and "temperature: auto" in warnings[0]
    assert all(r["sim_entropy_fraction"] < 0.05 for r in logged)
    text, logged = smollm2_run("auto", tmp_path / "auto")
    assert "temperature: auto -> " in text
    assert not [line for line in text.splitlines() if line.startswith("Sim health:")], text
    assert sim_health(logged)["status"] == "ok"
