"""The fused Triton in-batch attention against the plain oracle (on CPU in Triton's interpreter, on GPU natively),
and a compile of its kernels for Hopper (sm_90), which needs no GPU."""

import json
import os
import subprocess
import sys

import pytest
import torch

from oracle import plain_inbatch_attention
from revela.attention import inbatch_attention

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def grouped_inputs(G, B, H, Hkv, L, d, dtype, pad=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE, dtype).requires_grad_(True)

    q, k, v = leaf(G * B, H, L, d), leaf(G * B, Hkv, L, d), leaf(G * B, Hkv, L, d)
    scores = torch.randn(G, B, B, generator=g)
    scores[:, torch.arange(B), torch.arange(B)] = float("-inf")
    w = scores.softmax(-1).to(DEVICE).requires_grad_(True)
    mask = None
    if pad:
        lengths = torch.randint(1, L + 1, (G * B,), generator=g)
        lengths[0] = L
        mask = (torch.arange(L)[None, :] < lengths[:, None]).to(DEVICE)
    return q, k, v, w, mask


def oracle(q, k, v, w, mask, flags):
    """The plain reference group by group, in fp64."""
    G, B = w.shape[:2]
    parts = []
    for n in range(G):
        rows = slice(n * B, (n + 1) * B)
        parts.append(plain_inbatch_attention(q[rows].double(), k[rows].double(), v[rows].double(), w[n].double(),
                                             None if mask is None else mask[rows], v_norm=bool(flags[n])))
    return torch.cat(parts)


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


CASES = {
    # G groups, B chunks, H/Hkv heads, odd L, per-group V-norm flags: every code path of the kernels
    "groups-gqa-padding-mixed-vnorm": dict(G=2, B=3, H=4, Hkv=2, L=19, d=16, v_norm=(True, False)),
    "several-row-and-key-tiles": dict(G=1, B=3, H=2, Hkv=1, L=70, d=16, v_norm=True, pad=False),
    "no-vnorm-full-gqa": dict(G=1, B=4, H=4, Hkv=1, L=9, d=32, v_norm=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fused_matches_oracle_values_and_gradients_fp32(case):
    c = dict(CASES[case])
    flags = c.pop("v_norm")
    q, k, v, w, mask = grouped_inputs(dtype=torch.float32, **c)
    G = c["G"]
    flags = flags if isinstance(flags, tuple) else (flags,) * G
    v_norm = torch.tensor(flags) if len(set(flags)) > 1 else flags[0]
    got = inbatch_attention(q, k, v, w, mask, v_norm=v_norm, backend="triton")
    ref = oracle(q, k, v, w, mask, flags)
    assert got.shape == q.shape and rel(got, ref) < 1e-5
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    grads = torch.autograd.grad((got * g).sum(), (q, k, v, w))
    ref_grads = torch.autograd.grad((ref * g.double()).sum(), (q, k, v, w))
    for name, a, b in zip("qkvw", grads, ref_grads):
        assert rel(a, b) < 1e-4, (name, rel(a, b))


# Triton 3.9's interpreter multiplies bf16 tiles as raw 16-bit integers, so on CPU the 16-bit path is checked in
# fp16 (same casts and tile code); bf16 itself runs where there is a GPU.
HALF = torch.bfloat16 if DEVICE == "cuda" else torch.float16


def test_fused_half_precision_agrees_within_tolerance():
    q, k, v, w, mask = grouped_inputs(G=1, B=4, H=2, Hkv=1, L=24, d=32, dtype=HALF)
    got = inbatch_attention(q, k, v, w, mask, v_norm=True, backend="triton")
    assert got.dtype == HALF
    ref = oracle(q, k, v, w, mask, (True,))
    assert rel(got, ref) < 2e-2
    grads = torch.autograd.grad(got.float().square().sum(), (q, k, v, w))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v, w))
    for name, a, b in zip("qkvw", grads, ref_grads):
        assert rel(a, b) < 5e-2, (name, rel(a, b))


def test_a_chunk_of_only_padding_contributes_nothing_on_both_paths():
    q, k, v, w, mask = grouped_inputs(G=1, B=3, H=2, Hkv=1, L=6, d=16, dtype=torch.float32)
    mask[2] = False
    fused = inbatch_attention(q, k, v, w, mask, v_norm=True, backend="triton")
    blockwise = inbatch_attention(q, k, v, w, mask, v_norm=True, backend="torch")
    w_without = w.detach().clone()
    w_without[:, :, 2] = 0
    expected = oracle(q, k, v, w_without, mask, (True,))
    assert rel(fused, expected) < 1e-5 and rel(blockwise, expected) < 1e-5
    grads = torch.autograd.grad(fused.sum(), (q, k, v, w))
    assert all(torch.isfinite(t).all() for t in grads)
    assert grads[1][2].abs().max() == 0 and grads[2][2].abs().max() == 0  # nothing flows into the empty chunk


COMPILE = """
import json, torch
from revela.attention_triton import compile_kernels
print(json.dumps(compile_kernels(torch.bfloat16, head_dim=64, arch=90)))
"""


@pytest.mark.timeout(300)
def test_kernels_compile_for_hopper_within_shared_memory():
    """The real compiler (ptxas included) on the bf16 kernels, in a process where Triton is not interpreting."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr[-2000:]
    shared = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(shared) == {"_forward_kernel", "_backward_query_kernel", "_backward_key_kernel"}
    assert all(0 < size <= 227 * 1024 for size in shared.values()), shared


def test_under_autocast_mixed_query_key_value_dtypes_compute_in_the_autocast_dtype():
    """What the LM hands in under autocast: fp32 queries/keys (its rotary embedding follows the fp32 residual
    stream) next to half-precision values. Both backends compute in the autocast dtype, as SDPA does."""
    q, k, v, w, mask = grouped_inputs(G=1, B=4, H=2, Hkv=1, L=24, d=32, dtype=torch.float32)
    v = v.detach().to(HALF).requires_grad_(True)
    ref = oracle(q, k, v, w, mask, (True,))
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    ref_grads = torch.autograd.grad((ref * g.double()).sum(), (q, k, v, w))
    for backend in ("triton", "torch"):
        with torch.autocast(DEVICE, dtype=HALF):
            got = inbatch_attention(q, k, v, w, mask, v_norm=True, backend=backend)
        assert got.dtype == HALF, backend
        assert rel(got, ref) < 2e-2, (backend, rel(got, ref))
        grads = torch.autograd.grad((got.float() * g).sum(), (q, k, v, w))
        assert [t.dtype for t in grads] == [torch.float32, torch.float32, HALF, torch.float32], backend
        for name, a, b in zip("qkvw", grads, ref_grads):
            assert rel(a, b) < 5e-2, (backend, name, rel(a, b))


def test_outside_autocast_mixed_dtypes_are_promoted_to_one():
    q, k, v, w, mask = grouped_inputs(G=1, B=3, H=2, Hkv=1, L=9, d=16, dtype=torch.float32)
    v = v.detach().to(torch.float16).requires_grad_(True)
    got = inbatch_attention(q, k, v, w, mask, v_norm=True, backend="triton")
    assert got.dtype == torch.float32
    assert rel(got, oracle(q, k, v, w, mask, (True,))) < 1e-5
    assert torch.autograd.grad(got.sum(), v)[0].dtype == torch.float16


def test_tiny_llama_training_step_under_autocast_with_the_fused_kernels_matches_the_torch_path():
    """One training step of a tiny Llama RevelaModel under autocast (the default GPU setting, here fp16 on the CPU):
    the fused backend's loss and gradients agree with the blockwise torch backend's under the same autocast, and
    both with the fp32 step."""
    from tiny import random_batch, tiny_revela

    batch = {k: t.to(DEVICE) for k, t in random_batch(B=4, L=12).items()}

    def step(backend, autocast):
        torch.manual_seed(0)
        model = tiny_revela("llama", overrides={"objective": {"temperature": 0.05, "inbatch_backend": backend}})
        model.to(DEVICE)
        with torch.autocast(DEVICE, dtype=HALF, enabled=autocast):
            loss = model(batch).loss
        loss.backward()
        grads = {n: p.grad.detach().double().clone() for n, p in model.named_parameters() if p.grad is not None}
        return float(loss), grads

    fused_loss, fused = step("triton", True)
    torch_loss, torch_grads = step("torch", True)
    exact_loss, exact = step("torch", False)
    assert abs(fused_loss - torch_loss) < 1e-3 * torch_loss and abs(fused_loss - exact_loss) < 1e-3 * exact_loss
    assert fused.keys() == torch_grads.keys() and any(n.startswith("retriever.") for n in fused)
    flat = {name: torch.cat([g[n].flatten() for n in sorted(g)]) for name, g in
            (("fused", fused), ("torch", torch_grads), ("exact", exact))}
    assert rel(flat["fused"], flat["torch"]) < 1e-2 and rel(flat["fused"], flat["exact"]) < 2e-2
    for part in ("retriever.", "lm."):  # the retriever's gradient comes only through in-batch attention
        sub = {k: torch.cat([g[n].flatten() for n in sorted(g) if n.startswith(part)]) for k, g in
               (("fused", fused), ("torch", torch_grads))}
        assert rel(sub["fused"], sub["torch"]) < 1e-2, (part, rel(sub["fused"], sub["torch"]))
