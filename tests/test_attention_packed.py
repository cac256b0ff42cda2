"""The packed in-batch attention kernels (whole-chunk key tiles, GQA heads packed into rows, autotuned tiles) against
the plain oracle, for every tile shape their autotuning lists hold (Triton's interpreter on CPU), and their compile
for Hopper (sm_90) within shared memory, with the key kernel on wgmma."""

import json
import os
import subprocess
import sys

import pytest
import torch

from revela.attention import inbatch_attention
from test_attention_triton import CASES, DEVICE, HALF, grouped_inputs, oracle, rel

triton = pytest.importorskip("triton")
from revela import attention_packed  # noqa: E402
from revela.attention_packed import Tiles, chunk_tiles, key_tiles, row_tiles  # noqa: E402
from revela.attention_triton import kernel_variant, resolve_variant  # noqa: E402

ROW = "_packed_forward_kernel", "_packed_backward_query_kernel"
KEY = "_packed_backward_key_kernel"


SMALL = {"small-groups-gqa-padding-mixed-vnorm": dict(G=2, B=2, H=2, Hkv=1, L=19, d=16, v_norm=(True, False))}


def run_case(case: str, variant: str = "packed", dtype=torch.float32):
    c = dict({**CASES, **SMALL}[case])
    flags = c.pop("v_norm")
    q, k, v, w, mask = grouped_inputs(dtype=dtype, **c)
    flags = flags if isinstance(flags, tuple) else (flags,) * c["G"]
    v_norm = torch.tensor(flags) if len(set(flags)) > 1 else flags[0]
    with kernel_variant(variant):
        got = inbatch_attention(q, k, v, w, mask, v_norm=v_norm, backend="triton")
        ref = oracle(q, k, v, w, mask, flags)
        g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
        grads = torch.autograd.grad((got.float() * g).sum(), (q, k, v, w))
    ref_grads = torch.autograd.grad((ref * g.double()).sum(), (q, k, v, w))
    return got, ref, grads, ref_grads


def assert_exact(case: str, variant: str = "packed"):
    got, ref, grads, ref_grads = run_case(case, variant)
    assert got.shape == ref.shape and rel(got, ref) < 1e-5
    for name, a, b in zip("qkvw", grads, ref_grads):
        assert rel(a, b) < 1e-4, (name, rel(a, b))


@pytest.mark.parametrize("case", list(CASES))
def test_packed_matches_oracle_fp32(case):
    """One tile + tail (L=19: 16+16), several row tiles and a tail (L=70: 64+16), one tile only (L=9)."""
    assert_exact(case)


def test_split_kernels_still_match_oracle_fp32():
    """The previous kernels stay selectable (kernel_variant("split")); test_attention_triton runs the default."""
    assert_exact("groups-gqa-padding-mixed-vnorm", "split")


def test_key_kernel_split_over_query_chunks_is_exact(monkeypatch):
    """What a small grid on a GPU does: fp32 partials of dk/dv over shares of the query chunks, summed."""
    monkeypatch.setattr(attention_packed, "FORCED_SPLITS", 2)
    assert_exact("small-groups-gqa-padding-mixed-vnorm")


def shipped_tiles() -> list[tuple[Tiles, Tiles]]:
    """Every distinct (row tile, key tile) shape the autotuning lists hold, paired (warps and stages do not exist
    in the interpreter)."""
    rows = sorted({t.block_m for d, dt in ((64, torch.bfloat16), (128, torch.bfloat16), (256, torch.float32))
                   for t in row_tiles(d, dt, 160)})
    keys = sorted({(t.block_m, t.block_n) for d, dt in ((64, torch.bfloat16), (128, torch.bfloat16),
                                                         (256, torch.float32)) for t in key_tiles(d, dt)})
    count = max(len(rows), len(keys))
    return [(Tiles(rows[n % len(rows)]), Tiles(*keys[n % len(keys)])) for n in range(count)]


@pytest.mark.parametrize("tiles", shipped_tiles(), ids=lambda t: f"rows{t[0].block_m}-keys{t[1].block_n}")
def test_every_autotuned_tile_shape_is_exact(tiles, monkeypatch):
    row, key = tiles
    monkeypatch.setattr(attention_packed, "FORCED", {ROW[0]: row, ROW[1]: row, KEY: key})
    assert_exact("small-groups-gqa-padding-mixed-vnorm")


def test_packed_half_precision_agrees_within_tolerance():
    q, k, v, w, mask = grouped_inputs(G=1, B=4, H=2, Hkv=1, L=24, d=32, dtype=HALF)
    with kernel_variant("packed"):
        got = inbatch_attention(q, k, v, w, mask, v_norm=True, backend="triton")
        grads = torch.autograd.grad(got.float().square().sum(), (q, k, v, w))
    assert got.dtype == HALF and all(g.dtype == t.dtype for g, t in zip(grads, (q, k, v, w)))
    ref = oracle(q, k, v, w, mask, (True,))
    assert rel(got, ref) < 2e-2
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v, w))
    for name, a, b in zip("qkvw", grads, ref_grads):
        assert rel(a, b) < 5e-2, (name, rel(a, b))


def test_packed_and_split_agree_and_an_empty_chunk_contributes_nothing():
    q, k, v, w, mask = grouped_inputs(G=1, B=3, H=4, Hkv=2, L=6, d=16, dtype=torch.float32)
    mask[2] = False
    outs = {}
    for variant in ("packed", "split"):
        with kernel_variant(variant):
            out = inbatch_attention(q, k, v, w, mask, v_norm=True, backend="triton")
            outs[variant] = (out, torch.autograd.grad(out.sum(), (q, k, v, w)))
    assert rel(outs["packed"][0], outs["split"][0]) < 1e-6
    for a, b in zip(outs["packed"][1], outs["split"][1]):
        assert rel(a, b) < 1e-5
    dk, dv = outs["packed"][1][1:3]
    assert dk[2].abs().max() == 0 and dv[2].abs().max() == 0


def test_whole_chunk_tiles_and_the_variant_choice():
    assert chunk_tiles(160) == (128, 32) and chunk_tiles(128) == (128, 0) and chunk_tiles(9) == (16, 0)
    assert chunk_tiles(19) == (16, 16) and sum(chunk_tiles(157)) >= 157
    assert resolve_variant(160) == "packed" and resolve_variant(512) == "split"
    with kernel_variant("split"):
        assert resolve_variant(160) == "split"
    with pytest.raises(ValueError, match="variant"):
        with kernel_variant("fastest"):
            pass


COMPILE = """
import json, torch
from revela.attention_packed import compile_packed_kernels
print(json.dumps(compile_packed_kernels(torch.bfloat16, head_dim=64, keys=160, arch=90)))
"""


@pytest.mark.timeout(600)
def test_every_autotuned_entry_compiles_for_hopper_within_shared_memory():
    """The real compiler (ptxas included) on every shipped bf16 entry for d=64, 160-token chunks: each fits a Hopper
    SM's 227 KiB of shared memory, and every product of the key kernel compiles to wgmma (M >= 64)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=580)
    assert out.returncode == 0, out.stderr[-2000:]
    compiled = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(compiled) == 2 * len(row_tiles(64, torch.bfloat16, 160)) + len(key_tiles(64, torch.bfloat16))
    assert all(0 < c["shared"] <= 227 * 1024 for c in compiled.values()), compiled
    for name, c in compiled.items():
        if name.startswith(KEY):
            assert c["wgmma"] > 0 and c["mma_sync"] == 0, (name, c)


def test_packed_takes_the_lm_layout():
    """The LM hands over [N, heads, L, d] views of [N, L, heads, d] tensors (not contiguous)."""
    g = torch.Generator().manual_seed(3)
    N, H, Hkv, L, d = 4, 4, 2, 11, 16

    def view(heads):
        return torch.randn(N, L, heads, d, generator=g).to(DEVICE).transpose(1, 2).requires_grad_(True)

    q, k, v = view(H), view(Hkv), view(Hkv)
    w = torch.randn(2, 2, 2, generator=g).softmax(-1).to(DEVICE).requires_grad_(True)
    mask = torch.ones(N, L, dtype=torch.bool, device=DEVICE)
    mask[1, 7:] = False
    assert not q.is_contiguous()
    with kernel_variant("packed"):
        got = inbatch_attention(q, k, v, w, mask, v_norm=True, backend="triton")
        grads = torch.autograd.grad(got.square().sum(), (q, k, v, w))
    ref = oracle(q, k, v, w, mask, (True, True))
    assert rel(got, ref) < 1e-5
    for a, b in zip(grads, torch.autograd.grad(ref.square().sum(), (q, k, v, w))):
        assert rel(a, b) < 1e-4
