"""temperature: auto (revela.train.temperature), the sim: uniform control, and tau through checkpoints and resume."""

import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from revela.config import ModelConfig, RunConfig, TrainConfig
from revela.configbase import ConfigError, load_config
from revela.model import RevelaModel, similarity_weights
from revela.train.checkpoint import checkpoint_temperature, load_checkpoint, save_checkpoint
from revela.train.loop import Trainer, sim_stats
from revela.train.temperature import (CALIBRATION_GROUPS, bisect_temperature, calibration_batches,
                                      mean_entropy_fraction, setup_temperature)
from tiny import random_batch, tiny_lm, tiny_revela

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def code_groups(tmp_path_factory) -> list[list[str]]:
    """Real code: groups of 8 adjacent chunks of the stdlib json package (as `revela prepare` makes them)."""
    from revela.data.prepare import prepare
    from revela.data.shards import read_groups

    out = tmp_path_factory.mktemp("groups")
    prepare([str(Path(sysconfig.get_paths()["stdlib"]) / "json")], out, group_size=8, grouping="adjacent",
            max_words=48, max_tokens=64, progress=False, quiet=True)
    return read_groups(out).column("texts").to_pylist()


def stacked(model: RevelaModel, groups: list[list[str]], length: int = 64) -> dict:
    """G groups as one [G, B, L] batch, tokenized with the training views."""
    from revela.batch import GroupTokenizer

    tokenizer = GroupTokenizer(model.retriever.tokenizer, model.lm_tokenizer, model.retriever.protocol, length, False)
    parts = [tokenizer(list(g)) for g in groups]
    return {k: torch.from_numpy(np.stack([p[k] for p in parts])) for k in parts[0]}


def first_step_entropy(model: RevelaModel, batch: dict) -> float:
    """Sim H (share of ln(B-1)) as the Trainer logs it for a step over `batch` (its Sim in train mode, dropout on,
    through `sim_stats`), without paying for the LM's part of the step."""
    model.train()
    with torch.no_grad():
        return float(sim_stats(model.similarity(batch))["sim_entropy_fraction"])


def test_config_takes_auto_or_a_positive_number(tmp_path):
    assert ModelConfig().objective.temperature == "auto"
    cfg = load_config(RunConfig, None, ["model.objective.temperature=1.0e-4"])
    assert cfg.model.objective.temperature == 1e-4  # the paper's tau stays reproducible
    # YAML reads 3e-4 as a string; it is still the number, not a bad value
    assert load_config(RunConfig, None, ["model.objective.temperature=3e-4"]).model.objective.temperature == 3e-4
    for bad in ("0", "-1", "hot"):
        with pytest.raises(ConfigError, match=r"model\.objective\.temperature"):
            load_config(RunConfig, None, [f"model.objective.temperature={bad}"])
    for bad in ("0", "1", "1.5"):
        with pytest.raises(ConfigError, match=r"model\.objective\.target_entropy"):
            load_config(RunConfig, None, [f"model.objective.target_entropy={bad}"])
    with pytest.raises(ConfigError, match=r"model\.objective\.sim"):
        load_config(RunConfig, None, ["model.objective.sim=flat"])


def test_bisection_finds_the_target_and_entropy_rises_with_tau():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(6, 16, 32, generator=g), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(6, 16, 32, generator=g), dim=-1)
    fractions = [mean_entropy_fraction(q, p, tau) for tau in (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)]
    assert fractions == sorted(fractions) and fractions[0] < 0.01 and fractions[-1] > 0.99
    for target in (0.05, 0.5, 0.9):
        tau = bisect_temperature(q, p, target)
        assert mean_entropy_fraction(q, p, tau) == pytest.approx(target, abs=1e-4)


def test_calibration_batches_cover_the_first_step_and_enough_groups():
    assert calibration_batches(groups_per_forward=1, grad_accum=1) == CALIBRATION_GROUPS
    assert calibration_batches(groups_per_forward=8, grad_accum=1) == 1
    assert calibration_batches(groups_per_forward=8, grad_accum=4) == 4  # the first optimizer step's batches
    assert calibration_batches(groups_per_forward=3, grad_accum=1) == math.ceil(CALIBRATION_GROUPS / 3)


def test_auto_on_a_tiny_random_decoder_lands_the_first_step_near_its_target(code_groups):
    """A random Llama as retriever (EOS pooling, SmolLM2's tokenizer): auto finds its tau too."""
    from transformers import AutoTokenizer

    from revela.assets import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    backbone = tiny_lm(vocab=len(tok)).model  # the decoder without its head
    cfg = ModelConfig.model_validate({"retriever": {"finetune": "full", "pooling": "eos", "max_length": 64},
                                      "lm": {"finetune": "full", "max_length": 64},
                                      "objective": {"temperature": "auto", "target_entropy": 0.6}})
    model = RevelaModel.from_config(cfg, lm_model=tiny_lm(vocab=len(tok), seed=1), retriever_backbone=backbone,
                                    tokenizers=(tok, tok))
    batch = stacked(model, code_groups[:CALIBRATION_GROUPS])
    calibration = setup_temperature(model, 0.6, rank=0, first_batches=[batch])
    assert calibration.source == "calibrated" and calibration.groups == CALIBRATION_GROUPS
    assert model.temperature == calibration.temperature
    assert abs(first_step_entropy(model, batch) - 0.6) <= 0.06  # within 10% of the target, as training logs it


@pytest.mark.slow
def test_auto_on_minilm_lands_the_first_step_near_its_target(code_groups):
    """The real all-MiniLM-L6-v2 (its own mean pooling), a tiny LM: tau=1e-4 is one-hot, auto hits 70%."""
    from transformers import AutoModel, AutoTokenizer

    from revela.assets import resolve_model

    path = resolve_model("all-minilm-l6-v2")
    tok = AutoTokenizer.from_pretrained(path)
    cfg = ModelConfig.model_validate({"retriever": {"name": "all-minilm-l6-v2", "finetune": "full", "max_length": 64},
                                      "lm": {"finetune": "full", "max_length": 64}})
    model = RevelaModel.from_config(cfg, lm_model=tiny_lm(), retriever_backbone=AutoModel.from_pretrained(path),
                                    tokenizers=(tok, tok))
    assert model.temperature is None  # auto, the default
    batch = stacked(model, code_groups[:CALIBRATION_GROUPS])
    target = cfg.objective.target_entropy
    calibration = setup_temperature(model, target, rank=0, first_batches=[batch])
    assert calibration.entropy_fraction == pytest.approx(target, abs=1e-3)
    assert abs(first_step_entropy(model, batch) - target) <= 0.1 * target
    with torch.no_grad():
        paper = similarity_weights(*model.sim_embeddings(batch), 1e-4)
    assert float(paper.amax(-1).mean()) > 0.99  # the paper's tau: one-hot on this backbone


def test_uniform_sim_gives_the_retriever_exactly_zero_gradient():
    model = tiny_revela(overrides={"objective": {"temperature": 0.05, "sim": "uniform"}})
    assert not any(p.requires_grad for p in model.retriever.parameters())  # frozen: nothing to train, nothing to run
    before = {n: p.detach().clone() for n, p in model.retriever.named_parameters()}
    trainer = Trainer(model, TrainConfig(max_steps=2, warmup_steps=0, lr=1e-2), CPU)
    batch = random_batch(B=5)
    out = model(batch)
    assert torch.equal(out.doc_weights, (1 - torch.eye(5)) / 4)  # every other chunk weighted 1/(B-1)
    out.loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.retriever.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.lm.parameters())  # the LM still learns
    model.zero_grad()
    metrics = trainer.train_step([batch])
    assert metrics["grad_norm_retriever"] == 0.0 and metrics["grad_norm_lm"] > 0
    assert metrics["sim_entropy_fraction"] == pytest.approx(1.0)
    assert all(torch.equal(before[n], p) for n, p in model.retriever.named_parameters())
    # and the softmax control next to it does give the retriever a gradient (the check above can fail)
    soft = tiny_revela()
    soft(batch).loss.backward()
    assert any(p.grad is not None and p.grad.any() for p in soft.retriever.parameters())


def test_checkpoint_carries_tau_and_a_resumed_run_does_not_recalibrate(tmp_path):
    model = tiny_revela(overrides={"objective": {"temperature": "auto"}})
    batch = random_batch(B=6)
    calibration = setup_temperature(model, 0.7, rank=0, first_batches=[batch])
    trainer = Trainer(model, TrainConfig(max_steps=3, warmup_steps=0), CPU)
    trainer.train_step([batch])
    save_checkpoint(tmp_path / "ckpt", model, trainer, RunConfig(name="t"))
    assert checkpoint_temperature(tmp_path / "ckpt") == calibration.temperature
    resumed = tiny_revela(overrides={"objective": {"temperature": "auto"}})
    # the worker reads tau from the checkpoint first: no batch is needed, none is consumed, nothing is recalibrated
    again = setup_temperature(resumed, 0.2, rank=0, first_batches=[],
                              checkpoint_temperature=checkpoint_temperature(tmp_path / "ckpt"))
    assert again.source == "checkpoint" and resumed.temperature == calibration.temperature
    fresh = tiny_revela(overrides={"objective": {"temperature": "auto"}})
    load_checkpoint(tmp_path / "ckpt", fresh)  # held-out scoring and export load the checkpoint's tau too
    assert fresh.temperature == calibration.temperature
    fixed = tiny_revela(overrides={"objective": {"temperature": 0.3}})
    load_checkpoint(tmp_path / "ckpt", fixed)
    assert fixed.temperature == 0.3  # a number in the config wins
    with pytest.raises(ValueError, match="at least one training group"):
        setup_temperature(tiny_revela(overrides={"objective": {"temperature": "auto"}}), 0.7, 0, [])


def test_an_uncalibrated_model_says_so():
    model = tiny_revela(overrides={"objective": {"temperature": "auto"}})
    with pytest.raises(RuntimeError, match="not been calibrated"):
        model(random_batch())
