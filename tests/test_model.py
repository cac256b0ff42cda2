"""The Revela objective on tiny random models of each supported LM family."""

import pytest
import torch

from oracle import plain_inbatch_attention
from revela.inbatch_lm import InBatchState
from revela.model import group_lm_loss, similarity_weights
from tiny import LM_FAMILIES, random_batch, tiny_revela


def retriever_grad_norm(model):
    return sum(p.grad.norm() ** 2 for p in model.retriever.parameters() if p.grad is not None) ** 0.5


@pytest.mark.parametrize("family", list(LM_FAMILIES))
def test_sim_and_retriever_get_gradient(family):
    model = tiny_revela(family)
    out = model(random_batch())
    out.doc_weights.retain_grad()
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert out.doc_weights.grad.abs().sum() > 0
    assert retriever_grad_norm(model) > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.lm.parameters())


@pytest.mark.parametrize("weights", ["uniform", "detached"])
def test_uniform_or_detached_sim_gives_retriever_no_gradient(weights):
    model = tiny_revela()
    batch = random_batch()
    if weights == "uniform":
        B = batch["lm_input_ids"].shape[0]
        w = torch.full((B, B), 1.0 / (B - 1)).fill_diagonal_(0)
    else:
        w = model.similarity(batch).detach()
    model(batch, doc_weights=w).loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.retriever.parameters())


def test_pass3_equals_pass2_when_no_other_chunk_is_weighted():
    """With zero in-batch weights the in-batch term vanishes, so pass 3 reproduces pass 2 exactly."""
    model = tiny_revela().eval()
    batch = random_batch()
    out = model(batch, doc_weights=torch.zeros(4, 4))
    assert torch.allclose(out.loss, out.pass2_loss, atol=1e-6)


def test_each_layer_adds_oracle_inbatch_output_before_o_proj():
    """Hook o_proj's input in pass 3 and compare with base attention + oracle in-batch term."""
    model = tiny_revela(v_norm=True).eval()
    batch = random_batch()
    ids, mask = batch["lm_input_ids"], batch["lm_attention_mask"]
    attn = model.lm.model.layers[0].self_attn
    seen = []
    handle = attn.o_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    cap = InBatchState(capture=True)
    model.lm(input_ids=ids, attention_mask=mask, revela_inbatch=cap)
    w = similarity_weights(torch.randn(4, 8).softmax(-1), torch.randn(4, 8).softmax(-1), 0.1)
    model.lm(input_ids=ids, attention_mask=mask, revela_inbatch=cap.attend(w, mask.bool(), True))
    handle.remove()
    plain_out, inbatch_out = seen[0], seen[1]
    # queries of layer 0 in pass 3 equal pass 2's (same input), so recompute them from the captured keys' layer
    hidden = model.lm.model.embed_tokens(ids)
    hidden = model.lm.model.layers[0].input_layernorm(hidden)
    B, L, _ = hidden.shape
    q = attn.q_proj(hidden).view(B, L, -1, attn.head_dim).transpose(1, 2)
    pos = torch.arange(L)[None]
    cos, sin = model.lm.model.rotary_emb(hidden, pos)
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    q, _ = apply_rotary_pos_emb(q, q, cos, sin)
    ref = plain_inbatch_attention(q, cap.keys[0], cap.values[0], w, mask.bool(), v_norm=True, scaling=attn.scaling)
    expected = plain_out + ref.transpose(1, 2).reshape(B, L, -1)
    assert torch.allclose(inbatch_out, expected, atol=1e-5)


def test_similarity_rows_sum_to_one_and_exclude_diagonal():
    q = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    w = similarity_weights(q, q, 1e-4)
    assert torch.allclose(w.sum(-1), torch.ones(6))
    assert torch.all(w.diagonal() == 0)


def test_lm_loss_ignores_padding():
    logits = torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    full = group_lm_loss(logits, ids, mask)
    ids2 = ids.clone()
    ids2[1, 3:] = 7
    assert full.shape == (1,) and torch.allclose(full, group_lm_loss(logits, ids2, mask))


def test_group_of_one_is_an_error():
    model = tiny_revela()
    batch = {k: v[:1] for k, v in random_batch().items()}
    with pytest.raises(ValueError, match="at least 2"):
        model(batch)


def test_lora_on_both_models_trains_only_adapters():
    model = tiny_revela(overrides={"retriever": {"finetune": "lora", "pooling": "mean", "max_length": 32,
                                                 "lora": {"r": 4, "alpha": 8}},
                                   "lm": {"finetune": "lora", "max_length": 32, "lora": {"r": 4, "alpha": 8}}})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    model(random_batch()).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "retriever" in n)


def test_frozen_lm_still_trains_retriever():
    model = tiny_revela(overrides={"retriever": {"finetune": "full", "pooling": "mean", "max_length": 32},
                                   "lm": {"finetune": "frozen", "max_length": 32}})
    assert not any(p.requires_grad for p in model.lm.parameters())
    model(random_batch()).loss.backward()
    assert retriever_grad_norm(model) > 0


def test_groups_in_one_forward_equal_separate_one_group_forwards():
    """G groups as one batch of G*B sequences: same loss (mean over groups) and gradients as G one-group
    forwards, Sim kept inside each group, V-norm per group (prose on, code off)."""
    model = tiny_revela(v_norm=None)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    groups = [random_batch(seed=s) for s in (1, 2, 3)]
    is_code = [0, 1, 0]
    stacked = {k: torch.stack([g[k] for g in groups]) for k in groups[0]}
    stacked["is_code"] = torch.tensor(is_code)
    params = [p for p in model.parameters() if p.requires_grad]
    joint = model(stacked)
    joint_grads = torch.autograd.grad(joint.loss, params)
    separate = [model({**g, "is_code": torch.tensor(c)}) for g, c in zip(groups, is_code)]
    separate_loss = sum(out.loss for out in separate) / len(separate)
    separate_grads = torch.autograd.grad(separate_loss, params)
    assert torch.allclose(joint.loss, separate_loss, rtol=1e-5)
    assert torch.allclose(joint.pass2_loss, sum(out.pass2_loss for out in separate) / 3, rtol=1e-5)
    assert joint.doc_weights.shape == (3, 4, 4)
    for n, out in enumerate(separate):
        assert torch.allclose(joint.doc_weights[n], out.doc_weights, atol=1e-6)
    for a, b in zip(joint_grads, separate_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    # the code group really ran without V-norm: forcing V-norm on changes its loss
    forced = tiny_revela(v_norm=True)
    forced.load_state_dict(model.state_dict())
    assert not torch.allclose(forced({**groups[1], "is_code": torch.tensor(1)}).loss, separate[1].loss)


def test_auto_prefixes_follow_the_backbone(tmp_path):
    """auto: the backbone's own prompts if it ships them, none for an encoder without (the paper's cost MiniLM
    nDCG@10, bench/PROTOCOL_NOTES.md), the paper's for a decoder; a configured string is kept as given."""
    import json

    from revela.config import ModelConfig
    from revela.model import retriever_protocol
    from tiny import tiny_encoder, tiny_lm

    encoder, decoder = tiny_encoder().config, tiny_lm().config
    plain, prompted = tmp_path / "plain", tmp_path / "prompted"
    plain.mkdir()
    prompted.mkdir()
    (prompted / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "search_query: ", "document": "search_document: "}}))

    def prefixes(config, path, **retriever):
        p = retriever_protocol(ModelConfig.model_validate({"retriever": retriever}), config, str(path))
        return p.query_prefix, p.passage_prefix

    assert prefixes(encoder, plain) == ("", "")
    assert prefixes(encoder, prompted) == ("search_query: ", "search_document: ")
    assert prefixes(decoder, plain, pooling="eos") == ("query: ", "passage: ")
    assert prefixes(encoder, plain, query_prefix="q: ") == ("q: ", "")
    assert prefixes(decoder, plain, pooling="eos", passage_prefix="") == ("query: ", "")


def test_retriever_checkpointing_is_exact():
    from test_lm_passes import assert_same_step, build, grouped_batch, step

    batch = grouped_batch()
    assert_same_step(step(build(), batch), step(build(retriever={"gradient_checkpointing": True}), batch))


ALL_LEVERS = dict(retriever={"gradient_checkpointing": True}, gradient_checkpointing=True, loss_chunk_tokens=16)


def test_memory_levers_together_are_exact_and_keep_groups_separate():
    """Every memory lever on (retriever and both LM passes checkpointed, chunked cross-entropy): the same step as
    with none, and G groups in one forward still equal G one-group forwards (dropout on, seeded alike)."""
    from test_lm_passes import assert_same_step, build, grouped_batch, step

    batch = grouped_batch()
    assert_same_step(step(build(), batch), step(build(**ALL_LEVERS), batch))
    model = build(**ALL_LEVERS)
    for module in model.modules():  # separate forwards draw other dropout masks than one joint forward
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    joint = model(batch)
    joint_grads = torch.autograd.grad(joint.loss, params)
    separate = [model({k: v[n] for k, v in batch.items()}) for n in range(2)]
    separate_loss = sum(out.loss for out in separate) / 2
    separate_grads = torch.autograd.grad(separate_loss, params)
    assert torch.allclose(joint.loss, separate_loss, rtol=1e-5)
    assert torch.allclose(joint.pass2_loss, sum(out.pass2_loss for out in separate) / 2, rtol=1e-5)
    for a, b in zip(joint_grads, separate_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_compiled_retriever_gives_the_same_step():
    """model.retriever.compile (torch.compile of the backbone, inductor on the CPU here): same loss and gradients as
    eager, with dropout off (compiled code draws its own random numbers), and the same state-dict keys."""
    from test_lm_passes import assert_same_step, build, grouped_batch, step

    no_dropout = {"lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    batch = grouped_batch()
    eager = build(retriever=no_dropout)
    compiled = build(retriever={**no_dropout, "compile": True})
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    for model in (eager, compiled):
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    assert_same_step(step(eager, batch), step(compiled, batch))
    assert_same_step(step(eager, batch), step(compiled, batch))  # the second call runs the cached graph
