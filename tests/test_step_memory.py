"""The step's memory and time accounting (revela.step_memory) agrees with the allocator and the profiler."""

import torch

from revela.step_memory import CATEGORIES, PhaseRanges, SavedMemory, cpu_allocations, phase_times
from test_lm_passes import build, grouped_batch


def profiled_step(model, batch):
    """Saved-for-backward report and the allocator's view of one forward + backward."""
    report = {}

    def step(mark):
        with SavedMemory(model) as saved:
            out = model(batch, measure_pass2=False)
        mark("forward")
        report.update(saved.report(top=1000))
        out.loss.backward()

    model.train()
    allocations = cpu_allocations(step)
    model.zero_grad(set_to_none=True)
    return report, allocations


def test_saved_bytes_are_what_the_allocator_holds_after_the_forward():
    model, batch = build(), grouped_batch()
    report, allocations = profiled_step(model, batch)
    assert set(report["by_category"]) == set(CATEGORIES)
    assert sum(report["by_category"].values()) == report["saved_bytes"]
    assert sum(h["bytes"] for h in report["top"]) == report["saved_bytes"]
    live = allocations.at("forward")
    assert abs(live - report["saved_bytes"]) < 0.01 * live, (live, report["saved_bytes"])  # loss and Sim: bytes
    assert allocations.peak() >= live
    for category in ("retriever", "lm pass 2", "lm pass 3", "captured keys/values", "in-batch attention",
                     "logits + CE"):
        assert report["by_category"][category] > 0, category
    # every layer's post-RoPE keys and values of pass 2, [G*B, Hkv, L, head_dim] fp32 each, and nothing else
    lm = model.lm.config
    per_tensor = batch["lm_input_ids"][..., 0].numel() * lm.num_key_value_heads * batch["lm_input_ids"].shape[-1] \
        * (lm.hidden_size // lm.num_attention_heads) * 4
    assert report["by_category"]["captured keys/values"] == 2 * lm.num_hidden_layers * per_tensor


def test_allocations_do_not_depend_on_earlier_profiles():
    """The allocator's running total carries frees made outside a profile; each profile is read from its own start."""
    model, batch = build(), grouped_batch()
    first = profiled_step(model, batch)[1]
    second = profiled_step(model, batch)[1]
    assert abs(first.peak() - second.peak()) < 0.02 * first.peak()
    assert abs(first.at("forward") - second.at("forward")) < 0.02 * first.at("forward")


def test_phase_times_split_the_whole_step():
    from torch.profiler import ProfilerActivity, profile

    model, batch = build().train(), grouped_batch()
    with profile(activities=[ProfilerActivity.CPU]) as prof, PhaseRanges(model):
        out = model(batch, measure_pass2=False)
        out.loss.backward()
    times = phase_times(prof.events(), device=False)
    for phase in ("retriever", "lm pass 2", "lm pass 3", "in-batch attention", "logits + CE"):
        assert times.get(phase, 0) > 0, phase
    total = sum(e.self_cpu_time_total for e in prof.events())
    assert abs(sum(times.values()) - total) < 0.02 * total, (sum(times.values()), total)
    # backward counts for the phase whose forward created the node: the retriever's backward is in "retriever"
    forward_only = sum(e.cpu_time_total for e in prof.events() if e.name == "revela:retriever")
    assert times["retriever"] > forward_only
