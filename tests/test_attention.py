"""inbatch_attention against the plain oracle: values, gradients, GQA, padding, memory."""

import json
import subprocess
import sys

import pytest
import torch

from oracle import plain_inbatch_attention
from revela.attention import inbatch_attention


def make_inputs(B=5, H=4, Hkv=2, L=7, T=7, d=8, dtype=torch.float64, pad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, d, generator=g, dtype=dtype, requires_grad=True)
    k = torch.randn(B, Hkv, T, d, generator=g, dtype=dtype, requires_grad=True)
    v = torch.randn(B, Hkv, T, d, generator=g, dtype=dtype, requires_grad=True)
    s = torch.randn(B, B, generator=g, dtype=dtype)
    s.fill_diagonal_(float("-inf"))
    w = s.softmax(-1).detach().requires_grad_(True)
    mask = None
    if pad:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
        mask = torch.arange(T)[None, :] < lengths[:, None]
    return q, k, v, w, mask


@pytest.mark.parametrize("v_norm", [True, False])
@pytest.mark.parametrize("Hkv", [4, 2, 1])
@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 2, None])
def test_matches_oracle_values_and_grads(v_norm, Hkv, pad, chunk_size):
    q, k, v, w, mask = make_inputs(Hkv=Hkv, pad=pad)
    got = inbatch_attention(q, k, v, w, mask, v_norm=v_norm, chunk_size=chunk_size)
    ref = plain_inbatch_attention(q, k, v, w, mask, v_norm=v_norm)
    assert got.shape == ref.shape == q.shape
    rel = (got - ref).norm() / ref.norm()
    assert rel < 1e-10, rel
    g = torch.randn_like(ref)
    grads = torch.autograd.grad((got * g).sum(), (q, k, v, w))
    ref_grads = torch.autograd.grad((ref * g).sum(), (q, k, v, w))
    for name, a, b in zip("qkvw", grads, ref_grads):
        assert (a - b).norm() / b.norm() < 1e-10, name


def test_fp32_agreement_within_1e5():
    q, k, v, w, mask = make_inputs(B=8, H=4, Hkv=2, L=16, T=16, d=16, dtype=torch.float32)
    got = inbatch_attention(q, k, v, w, mask)
    ref = plain_inbatch_attention(q.double(), k.double(), v.double(), w.double(), mask).float()
    assert ((got - ref).norm() / ref.norm()) < 1e-5


def test_gradcheck_double():
    q, k, v, w, mask = make_inputs(B=3, H=2, Hkv=1, L=3, T=3, d=4)
    assert torch.autograd.gradcheck(lambda *a: inbatch_attention(*a, key_mask=mask, chunk_size=2), (q, k, v, w))


def test_v_norm_bounds_each_pair_output():
    """With V-norm every b~_ij has norm <= 1, so the weighted sum (rows of w sum to 1) does too."""
    q, k, v, w, mask = make_inputs(B=6, d=8, dtype=torch.float64)
    out = inbatch_attention(q, k, v * 50, w, mask, v_norm=True)
    assert out.norm(dim=-1).max() <= 1 + 1e-6


def test_padding_tokens_of_j_are_invisible():
    q, k, v, w, mask = make_inputs(pad=True)
    base = inbatch_attention(q, k, v, w, mask)
    k2, v2 = k.detach().clone(), v.detach().clone()
    hidden = ~mask[:, None, :, None]
    k2.masked_fill_(hidden, 123.0)
    v2.masked_fill_(hidden, -77.0)
    assert torch.allclose(base, inbatch_attention(q, k2, v2, w, mask))


def test_zero_weight_chunks_do_not_contribute():
    q, k, v, w, mask = make_inputs(B=4, pad=False)
    w = torch.zeros(4, 4, dtype=q.dtype)
    w[:, 1] = 1.0
    w[1, 1], w[1, 2] = 0.0, 1.0
    out = inbatch_attention(q, k, v, w, v_norm=False)
    only = plain_inbatch_attention(q, k, v, w, v_norm=False)
    assert torch.allclose(out, only)


def test_shape_errors_are_clear():
    q, k, v, w, mask = make_inputs()
    with pytest.raises(ValueError, match="doc_weights"):
        inbatch_attention(q, k, v, w[:2])
    with pytest.raises(ValueError, match="multiple"):
        inbatch_attention(q[:, :3], k, v, w)
    with pytest.raises(ValueError, match="key_mask"):
        inbatch_attention(q, k, v, w, mask[:, :2])


MEMORY_PROBE = r"""
import json, resource, sys, torch
sys.path.insert(0, "tests")
from oracle import plain_inbatch_attention
from revela.attention import inbatch_attention
torch.manual_seed(0)
B, H, Hkv, L, d = 48, 4, 2, 128, 16
q = torch.randn(B, H, L, d, requires_grad=True)
k = torch.randn(B, Hkv, L, d, requires_grad=True)
v = torch.randn(B, Hkv, L, d, requires_grad=True)
w = torch.randn(B, B).softmax(-1).requires_grad_(True)
mask = torch.ones(B, L, dtype=torch.bool)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
saved = [0]
def pack(t):
    saved[0] += t.numel() * t.element_size()
    return t
fn = plain_inbatch_attention if sys.argv[1] == "plain" else inbatch_attention
with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    out = fn(q, k, v, w, mask)
out.sum().backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_extra_mib": (peak - base) / 1024, "saved_mib": saved[0] / 2**20}))
"""


def _probe(kind):
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, kind], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_memory_is_far_below_the_plain_version_at_B48_L128():
    plain, ours = _probe("plain"), _probe("chunked")
    # autograd of the plain version keeps [B, B, H, L, L] scores/probs; ours keeps only the inputs
    assert ours["saved_mib"] < 0.1 * plain["saved_mib"], (ours, plain)
    assert ours["peak_extra_mib"] < 0.5 * plain["peak_extra_mib"], (ours, plain)
