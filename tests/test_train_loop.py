"""The single-process training step, checkpoints and export, on tiny random models."""

import json

import numpy as np
import pytest
import torch

from revela.config import RunConfig, TrainConfig
from revela.export import export_retriever
from revela.retriever import Retriever
from revela.train.checkpoint import is_complete, load_checkpoint, save_checkpoint, trainable_state
from revela.train.loop import NonFiniteLossError, Trainer
from tiny import random_batch, tiny_revela

DEVICE = torch.device("cpu")


def without_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def make_trainer(model, **overrides):
    cfg = TrainConfig(**{"lr": 1e-3, "warmup_steps": 2, "max_steps": 20, **overrides})
    return Trainer(model, cfg, DEVICE)


def test_loss_decreases_on_a_repeated_group():
    torch.manual_seed(0)
    model = tiny_revela()
    trainer = make_trainer(model, lr=3e-3, warmup_steps=0)
    batch = random_batch()
    first = trainer.train_step([batch])["loss"]
    for _ in range(15):
        last = trainer.train_step([batch])
    assert last["loss"] < first - 0.5
    assert last["step"] == 16
    assert {"pass2_loss", "loss_gap", "sim_entropy", "sim_top1_weight", "grad_norm_retriever", "grad_norm_lm"} <= set(last)


def test_warmup_then_linear_decay():
    trainer = make_trainer(tiny_revela(), lr=1e-3, warmup_steps=2, max_steps=4)
    lrs = [trainer.train_step([random_batch()])["lr"] for _ in range(4)]
    assert lrs == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])


def test_gradient_accumulation_matches_one_big_step():
    """Two micro-batches with accumulation give the mean of their gradients."""
    batches = [random_batch(seed=1), random_batch(seed=2)]
    a = without_dropout(tiny_revela().train())
    b = without_dropout(tiny_revela().train())  # dropout off so both see the same function
    ta = make_trainer(a, max_grad_norm=None, warmup_steps=0)
    ta.train_step(batches)
    sep = []
    for batch in batches:
        b.zero_grad()
        b(batch).loss.backward()
        sep.append({n: p.grad.clone() for n, p in b.named_parameters() if p.grad is not None})
    tb = make_trainer(b, max_grad_norm=None, warmup_steps=0)
    for n, p in b.named_parameters():
        if n in sep[0]:
            p.grad = (sep[0][n] + sep[1][n]) / 2
    tb.optimizer.step()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa, pb, atol=1e-6), n


def test_non_finite_loss_raises_clearly():
    model = tiny_revela()
    trainer = make_trainer(model)
    with torch.no_grad():
        model.lm.lm_head.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="step 1"):
        trainer.train_step([random_batch()])


def test_checkpoint_roundtrip_restores_weights_optimizer_and_step(tmp_path):
    model = tiny_revela()
    trainer = make_trainer(model)
    for _ in range(3):
        trainer.train_step([random_batch()])
    cfg = RunConfig(name="t")
    path = save_checkpoint(tmp_path / "ckpt", model, trainer, cfg, {"epoch": 0, "groups_in_epoch": 3})
    assert is_complete(path)
    assert not list(tmp_path.glob(".*staging*"))
    fresh = tiny_revela(seed=1)
    fresh_trainer = make_trainer(fresh)
    data = load_checkpoint(path, fresh, fresh_trainer)
    assert data == {"epoch": 0, "groups_in_epoch": 3}
    assert fresh_trainer.step == 3
    for (n, p), (_, q) in zip(trainable_state(model).items(), trainable_state(fresh).items()):
        assert torch.equal(p, q), n
    for m in (model, fresh):  # dropout draws from the global RNG: off, so both steps compute the same function
        without_dropout(m)
    a = trainer.train_step([random_batch(seed=5)])
    b = fresh_trainer.train_step([random_batch(seed=5)])
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_incomplete_checkpoint_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete"):
        load_checkpoint(tmp_path / "half", tiny_revela())


def test_checkpoint_of_another_model_is_refused(tmp_path):
    model = tiny_revela()
    path = save_checkpoint(tmp_path / "c", model, make_trainer(model), RunConfig(name="t"))
    lora = tiny_revela(overrides={"retriever": {"finetune": "lora", "pooling": "mean", "max_length": 32,
                                                "lora": {"r": 2}},
                                  "lm": {"finetune": "lora", "max_length": 32, "lora": {"r": 2}}})
    with pytest.raises(ValueError, match="incompatible"):
        load_checkpoint(path, lora)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_export_loads_in_sentence_transformers_with_the_same_embeddings(tmp_path, finetune):
    from sentence_transformers import SentenceTransformer

    model = tiny_revela(overrides={"retriever": {"finetune": finetune, "pooling": "mean", "max_length": 32,
                                                 "lora": {"r": 2}, "query_prefix": "query: ",
                                                 "passage_prefix": "passage: "},
                                   "lm": {"finetune": "frozen", "max_length": 32}})
    trainer = make_trainer(model, lr=1e-2, warmup_steps=0)
    trainer.train_step([random_batch()])
    cfg = RunConfig.model_validate({"name": "t", "model": {"retriever": {"name": str(tmp_path / "base"),
                                                                         "finetune": finetune}}})
    # LoRA checkpoints point at their base model by name: save the tiny base where that name resolves
    base = tiny_revela().retriever
    base.backbone.save_pretrained(tmp_path / "base")
    base.tokenizer.save_pretrained(tmp_path / "base")
    ckpt = save_checkpoint(tmp_path / "ckpt", model, trainer, cfg)
    out = export_retriever(str(ckpt), tmp_path / "export")
    texts = ["def add(a, b): return a + b", "The cat sat on the mat.", "query planning in databases"]
    ours = Retriever.load(str(ckpt)).encode(texts, "query")
    st = SentenceTransformer(str(out), device="cpu").encode(texts, prompt_name="query", normalize_embeddings=False)
    assert np.allclose(ours, st, atol=1e-5)
    assert json.loads((out / "config_sentence_transformers.json").read_text())["prompts"]["query"] == "query: "


def test_retriever_gets_its_own_learning_rate():
    model = tiny_revela()
    trainer = make_trainer(model, lr=1e-3, retriever_lr=2e-5, warmup_steps=0)
    retriever = {id(p) for p in model.retriever.parameters()}
    by_lr = {g["lr"]: g["params"] for g in trainer.optimizer.param_groups}
    assert set(by_lr) == {2e-5, 1e-3}
    assert all(id(p) in retriever for p in by_lr[2e-5])
    assert not any(id(p) in retriever for p in by_lr[1e-3])
    before = {n: p.detach().clone() for n, p in model.retriever.named_parameters() if p.requires_grad}
    trainer.train_step([random_batch()])
    moved = max(float((p - before[n]).abs().max()) for n, p in model.retriever.named_parameters() if n in before)
    assert 0 < moved <= 2e-5 * 1.01  # one Adam step moves each weight by at most ~lr
