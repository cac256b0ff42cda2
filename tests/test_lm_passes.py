"""The memory levers of the Revela step give the same loss and gradients as the plain step, and save what they say."""

import dataclasses

import pytest
import torch

import revela.model
from revela.lm_passes import check_head, chunked_group_lm_loss
from revela.model import group_lm_loss
from revela.step_memory import SavedMemory
from tiny import LM_FAMILIES, random_batch, tiny_revela

LORA = {"r": 4, "alpha": 8, "dropout": 0.1}


def build(family="llama", lm=None, retriever=None, seed=0, **lm_config):
    """Tiny retriever and LM with LoRA (dropout on); every B matrix non-zero, so every adapter gets a gradient."""
    overrides = {"retriever": {"finetune": "lora", "pooling": "mean", "max_length": 32, "lora": LORA,
                               **(retriever or {})},
                 "lm": {"finetune": "lora", "max_length": 32, "lora": LORA, **lm_config}}
    model = tiny_revela(family, overrides=overrides, seed=seed) if lm is None else lm(overrides)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def grouped_batch():
    groups = [random_batch(seed=s) for s in (1, 2)]
    return {k: torch.stack([g[k] for g in groups]) for k in groups[0]}


def step(model, batch, seed=0, measure_pass2=True):
    """Loss, pass-2 loss and every trainable gradient of one forward + backward (dropout on, seeded)."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(batch, measure_pass2=measure_pass2)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.detach(), out.pass2_loss, grads


def assert_same_step(a, b):
    (loss_a, p2_a, grads_a), (loss_b, p2_b, grads_b) = a, b
    assert torch.allclose(loss_a, loss_b, rtol=1e-5, atol=1e-6), (loss_a, loss_b)
    if p2_a is not None:
        assert torch.allclose(p2_a, p2_b, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    missing = [n for n, g in grads_a.items() if g.abs().sum() == 0]
    assert len(missing) < len(grads_a) / 4, missing  # the comparison is not between zeros
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("family", list(LM_FAMILIES))
def test_chunked_cross_entropy_gives_the_same_loss_and_gradients(family):
    """peft-wrapped LMs of every family; the tiny Gemma3 ties its head to the embeddings and soft-caps its logits."""
    batch = grouped_batch()
    plain = step(build(family), batch)
    chunked_model = build(family, loss_chunk_tokens=7)  # 7 does not divide the 2*4*12 positions
    assert step(chunked_model, batch)[0] == step(chunked_model, batch)[0]  # deterministic under the same seed
    assert_same_step(plain, step(chunked_model, batch))


def test_chunked_cross_entropy_with_a_soft_capped_tied_head():
    def gemma_with_softcap(overrides):
        from tiny import tiny_encoder, tiny_lm, tokenizer
        from revela.config import ModelConfig
        from revela.model import RevelaModel

        lm = tiny_lm("gemma3")
        lm.config.final_logit_softcapping = 3.0  # small enough to bend random logits
        assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
        cfg = ModelConfig.model_validate({**overrides, "objective": {"temperature": 0.05, "v_norm": True}})
        tok = tokenizer()
        return RevelaModel.from_config(cfg, lm_model=lm, retriever_backbone=tiny_encoder(), tokenizers=(tok, tok))

    batch = random_batch()
    assert_same_step(step(build(lm=gemma_with_softcap), batch),
                     step(build(lm=gemma_with_softcap, loss_chunk_tokens=5), batch))


def test_chunked_loss_matches_the_full_logits_loss_directly():
    model = build(loss_chunk_tokens=3).eval()
    batch = random_batch()
    ids, mask = batch["lm_input_ids"], batch["lm_attention_mask"]
    hidden = model.lm.get_base_model().model(input_ids=ids, attention_mask=mask).last_hidden_state
    full = group_lm_loss(model.lm(input_ids=ids, attention_mask=mask).logits, ids, mask, groups=2)
    for chunk in (1, 5, 48, 1000):
        assert torch.allclose(chunked_group_lm_loss(model.lm, hidden, ids, mask, 2, chunk), full, rtol=1e-6)


def test_an_lm_whose_forward_rescales_its_logits_is_refused():
    from transformers import GraniteConfig, GraniteForCausalLM

    lm = GraniteForCausalLM(GraniteConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=4, num_key_value_heads=2, logits_scaling=4.0))
    with pytest.raises(ValueError, match="loss_chunk_tokens"):
        check_head(lm)


def test_chunked_loss_never_holds_the_logits():
    """Saved for backward under 'logits + CE': at least tokens x vocab fp32 without chunks, a small fraction with."""
    batch = random_batch()
    tokens, vocab = batch["lm_input_ids"].numel(), 30522
    saved = {}
    for chunk in (None, 8):
        model = build(loss_chunk_tokens=chunk).train()
        with SavedMemory(model) as memory:
            out = model(batch, measure_pass2=True)
        saved[chunk] = memory.report()["by_category"]["logits + CE"]
        out.loss.backward()
    assert saved[None] >= (tokens - 4) * vocab * 4
    assert saved[8] < 8 * vocab * 4 / 4


@pytest.mark.parametrize("passes", [True, "pass2", "pass3"])
def test_layer_checkpointing_per_pass_is_exact_and_keeps_the_captured_keys_gradient(passes, monkeypatch):
    """LoRA dropout is on: the replayed layers must draw the same masks. The captured keys/values (pass 2's output,
    read by pass 3) get the same gradient as without checkpointing."""
    captured = []

    @dataclasses.dataclass
    class Recording(revela.model.InBatchState):
        def __post_init__(self):
            if self.capture:
                captured.append(self)

    monkeypatch.setattr(revela.model, "InBatchState", Recording)
    batch = grouped_batch()

    def run(**lm_config):
        captured.clear()
        model = build(**lm_config).train()
        torch.manual_seed(0)
        out = model(batch)
        kv = [*captured[0].keys.values(), *captured[0].values.values()]  # before pass 2 may be replayed
        for t in kv:
            t.retain_grad()
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return (out.loss.detach(), out.pass2_loss, grads), [t.grad for t in kv]

    plain, plain_kv = run()
    checkpointed, checkpointed_kv = run(gradient_checkpointing=passes)
    assert_same_step(plain, checkpointed)
    assert len(plain_kv) == 4 and all(g is not None and g.abs().sum() > 0 for g in plain_kv)
    for a, b in zip(plain_kv, checkpointed_kv):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_checkpointed_pass_keeps_less_for_backward():
    batch = grouped_batch()
    saved = {}
    for passes in (False, "pass3", "pass2"):
        model = build(gradient_checkpointing=passes).train()
        with SavedMemory(model) as memory:
            out = model(batch, measure_pass2=False)
        saved[passes] = memory.report()["by_category"]
        out.loss.backward()
    assert saved["pass3"]["lm pass 3"] < saved[False]["lm pass 3"] / 2
    assert saved["pass3"]["lm pass 2"] == saved[False]["lm pass 2"]
    assert saved["pass2"]["lm pass 2"] < saved[False]["lm pass 2"] / 2
    assert saved["pass2"]["lm pass 3"] == saved[False]["lm pass 3"]


def test_lever_settings_are_validated():
    from revela.config import LMConfig

    assert LMConfig(gradient_checkpointing="pass3").gradient_checkpointing == "pass3"
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        LMConfig(gradient_checkpointing="pass4")
    with pytest.raises(ValueError, match="loss_chunk_tokens"):
        LMConfig(loss_chunk_tokens=0)
