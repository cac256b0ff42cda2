"""The "packed" variant of the fused in-batch attention kernels (revela.attention_triton holds the math and the
"split" variant; `kernel_variant` there chooses).

What changes against "split" (same outputs, same saved statistics, exact against the same oracle):
  - one key tile per whole chunk: a chunk of T keys is one T1-wide tile plus, when T is not a power of two, one
    T2-wide tail (160 = 128 + 32). The softmax over chunk j takes its exact maximum first, so the forward needs no
    online rescale, and the query-side backward is one pass per chunk j: p, dp = dout . v^T and g_j = sum p dp come
    from the same tiles, then the coefficients, then ds and dq (3 tile products per chunk instead of 5);
  - GQA heads packed into rows: one program per block of (query head, row) pairs of one chunk and one key/value
    head, so K/V tiles serve every query head that shares them; the key kernel (one program per key tile, chunk
    and key/value head) accumulates dk, dv and d||v|| over all those heads on chip and writes them once, in the
    inputs' dtype (no per-query-head buffers); when that grid is too small to fill the GPU (small G*B), each
    program takes a share of the query chunks and fp32 partials are summed (`key_splits`);
  - key-side tiles of 64 or 128 keys, so every product of the key kernel has M >= 64 (Hopper's wgmma);
  - tile sizes, warps and pipeline stages autotuned per shape from a short list (every entry is compiled for sm_90
    in CI and must fit its shared memory); in Triton's interpreter the first entry runs, or the one a test forces.
The backward stays two kernels, queries then keys: a single FlashAttention-2-style kernel would still need g_j
(= dout . a_j) for every (row, j) before any score gradient, i.e. the same pre-pass over the keys, plus fp32 atomics
for dq; two kernels do the same 7 tile products per (row block, key tile) pair, deterministically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from revela.attention import V_NORM_EPS
from revela.attention_triton import (LOG2E, _chunk_output, _key_grads, _key_tile_inputs, _score_tile, _strides, _tile,
                                     _v_norm_coefficients)

MAX_KEYS = 256
"""Longest chunk the whole-chunk tiles take (registers hold a [BLOCK_M, T] score tile); longer ones use "split"."""


@triton.jit
def _packed_rows(H, L, B, GQA: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    """A program over (block of packed rows, chunk x key/value head): chunk n, key/value head hk (of hkv), group,
    position i in the group, and per packed row its query head h and token l, with the row/dim bounds."""
    pid_m = tl.program_id(0)
    pid_nk = tl.program_id(1)
    hkv = H // GQA
    n = pid_nk // hkv
    hk = pid_nk % hkv
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    return n, hk, hkv, n // B, n % B, hk * GQA + rows // L, rows % L, dims, rows < GQA * L, dims < HEAD_DIM


@triton.jit
def _row_tile(P, n, h, lrow, dims, sn, sh, sl, sd, row_ok, dim_ok):
    """Packed rows (head h, token l per row) of chunk n of a [N, heads, L, d] tensor; zeros out of bounds."""
    return tl.load(P + n * sn + h[:, None] * sh + lrow[:, None] * sl + dims[None, :] * sd,
                   mask=row_ok[:, None] & dim_ok[None, :], other=0.0)


@triton.jit
def _chunk_part(q, K, V, VN, KM, nj, hk, hkv, t0, T, skn, skh, skt, skd, svn, svh, svt, svd, qk_scale, dims,
                dim_ok, BLOCK_T: tl.constexpr, HAS_MASK: tl.constexpr, VNORM: tl.constexpr,
                DOT_PRECISION: tl.constexpr):
    """Scores of the rows against keys t0..t0+BLOCK_T of chunk nj (-inf where no real key), that V tile and its
    norms (zeros out of bounds or without V-norm), and the transposed key tile."""
    s, ts, kt = _score_tile(q, K, KM, nj * skn + hk * skh, nj * T, t0, T, skt, skd, qk_scale, dims, dim_ok,
                            BLOCK_T, HAS_MASK, DOT_PRECISION)
    t_ok = ts < T
    v = _tile(V, nj, hk, ts, dims, svn, svh, svt, svd, t_ok, dim_ok)
    vn = tl.zeros([BLOCK_T], dtype=tl.float32)
    if VNORM != 0:
        vn = tl.load(VN + (nj * hkv + hk) * T + ts, mask=t_ok, other=0.0)
    return s, v, vn, kt


@triton.jit
def _packed_forward_kernel(
    Q, K, V, VN, W, KM, VF, Out, Lse, Nrm,
    sqn, sqh, sql, sqd, skn, skh, skt, skd, svn, svh, svt, svd, son, soh, sol, sod,
    H, L, T, B, qk_scale,
    GQA: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    T1: tl.constexpr, T2: tl.constexpr, HAS_MASK: tl.constexpr, VNORM: tl.constexpr, EPS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    n, hk, hkv, grp, i, h, lrow, dims, row_ok, dim_ok = _packed_rows(H, L, B, GQA, HEAD_DIM, BLOCK_M, BLOCK_D)
    q = _row_tile(Q, n, h, lrow, dims, sqn, sqh, sql, sqd, row_ok, dim_ok)
    on = False
    if VNORM == 2:
        on = tl.load(VF + grp) != 0
    out = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for j in range(0, B):
        nj = grp * B + j
        w = tl.load(W + (grp * B + i) * B + j)
        s1, v1, vn1, _k1 = _chunk_part(q, K, V, VN, KM, nj, hk, hkv, 0, T, skn, skh, skt, skd, svn, svh, svt, svd,
                                       qk_scale, dims, dim_ok, T1, HAS_MASK, VNORM, DOT_PRECISION)
        m = tl.max(s1, 1)
        if T2 > 0:
            s2, v2, vn2, _k2 = _chunk_part(q, K, V, VN, KM, nj, hk, hkv, T1, T, skn, skh, skt, skd, svn, svh, svt,
                                           svd, qk_scale, dims, dim_ok, T2, HAS_MASK, VNORM, DOT_PRECISION)
            m = tl.maximum(m, tl.max(s2, 1))
        m = tl.where(m == float("-inf"), 0.0, m)  # a chunk of only padding: every p below is 0
        p1 = tl.exp2(s1 - m[:, None])
        l = tl.sum(p1, 1)
        acc = tl.dot(p1.to(v1.dtype), v1, input_precision=DOT_PRECISION)
        nsum = tl.sum(p1 * vn1[None, :], 1)
        if T2 > 0:
            p2 = tl.exp2(s2 - m[:, None])
            l += tl.sum(p2, 1)
            acc += tl.dot(p2.to(v2.dtype), v2, input_precision=DOT_PRECISION)
            nsum += tl.sum(p2 * vn2[None, :], 1)
        out += _chunk_output(acc, l, nsum, m, w, on, Lse, Nrm, ((n * H + h) * B + j) * L + lrow, row_ok, VNORM, EPS)
    tl.store(Out + n * son + h[:, None] * soh + lrow[:, None] * sol + dims[None, :] * sod,
             out.to(Out.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


@triton.jit
def _score_grads(s, v, do, lse, DOT_PRECISION: tl.constexpr):
    """p and dp = dout . v^T of one key tile, with its share of g = sum_t p dp."""
    p = tl.exp2(s - lse[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    return p, dp, tl.sum(p * dp, 1)


@triton.jit
def _packed_backward_query_kernel(
    Q, K, V, VN, W, KM, VF, DO, DQ, Lse, Nrm, Cf, Dn, Ds, Gw,
    sqn, sqh, sql, sqd, skn, skh, skt, skd, svn, svh, svt, svd, sdn, sdh, sdl, sdd, sgn, sgh, sgl, sgd,
    H, L, T, B, qk_scale, sm_scale,
    GQA: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    T1: tl.constexpr, T2: tl.constexpr, HAS_MASK: tl.constexpr, VNORM: tl.constexpr, EPS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    n, hk, hkv, grp, i, h, lrow, dims, row_ok, dim_ok = _packed_rows(H, L, B, GQA, HEAD_DIM, BLOCK_M, BLOCK_D)
    q = _row_tile(Q, n, h, lrow, dims, sqn, sqh, sql, sqd, row_ok, dim_ok)
    do = _row_tile(DO, n, h, lrow, dims, sdn, sdh, sdl, sdd, row_ok, dim_ok)
    on = False
    if VNORM == 2:
        on = tl.load(VF + grp) != 0
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for j in range(0, B):
        nj = grp * B + j
        w = tl.load(W + (grp * B + i) * B + j)
        stat = ((n * H + h) * B + j) * L + lrow
        lse = tl.load(Lse + stat, mask=row_ok, other=float("inf"))
        nrm = tl.zeros([BLOCK_M], dtype=tl.float32)
        if VNORM != 0:
            nrm = tl.load(Nrm + stat, mask=row_ok, other=0.0)
        s1, v1, vn1, kt1 = _chunk_part(q, K, V, VN, KM, nj, hk, hkv, 0, T, skn, skh, skt, skd, svn, svh, svt, svd,
                                       qk_scale, dims, dim_ok, T1, HAS_MASK, VNORM, DOT_PRECISION)
        p1, dp1, g = _score_grads(s1, v1, do, lse, DOT_PRECISION)
        if T2 > 0:
            s2, v2, vn2, kt2 = _chunk_part(q, K, V, VN, KM, nj, hk, hkv, T1, T, skn, skh, skt, skd, svn, svh, svt,
                                           svd, qk_scale, dims, dim_ok, T2, HAS_MASK, VNORM, DOT_PRECISION)
            p2, dp2, g2 = _score_grads(s2, v2, do, lse, DOT_PRECISION)
            g += g2
        c, dn, dsum, gw = _v_norm_coefficients(w, nrm, g, on, VNORM, EPS)
        tl.store(Cf + stat, c, mask=row_ok)
        tl.store(Ds + stat, dsum, mask=row_ok)
        tl.store(Gw + stat, gw, mask=row_ok)
        if VNORM != 0:
            tl.store(Dn + stat, dn, mask=row_ok)
        ds1 = p1 * (c[:, None] * dp1 - dsum[:, None] + dn[:, None] * vn1[None, :])
        dq += tl.dot(ds1.to(kt1.dtype), tl.trans(kt1), input_precision=DOT_PRECISION)
        if T2 > 0:
            ds2 = p2 * (c[:, None] * dp2 - dsum[:, None] + dn[:, None] * vn2[None, :])
            dq += tl.dot(ds2.to(kt2.dtype), tl.trans(kt2), input_precision=DOT_PRECISION)
    tl.store(DQ + n * sgn + h[:, None] * sgh + lrow[:, None] * sgl + dims[None, :] * sgd,
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


@triton.jit
def _packed_backward_key_kernel(
    Q, K, V, VN, KM, DO, DK, DV, DVN, Lse, Cf, Dn, Ds,
    sqn, sqh, sql, sqd, skn, skh, skt, skd, svn, svh, svt, svd, sdn, sdh, sdl, sdd,
    H, L, T, B, SPLITS, qk_scale, sm_scale,
    GQA: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_MASK: tl.constexpr, VNORM: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_nk = tl.program_id(1)
    pid_s = tl.program_id(2)  # this program's share of the query chunks: i = pid_s, pid_s + SPLITS, ...
    hkv = H // GQA
    nj = pid_nk // hkv
    hk = pid_nk % hkv
    grp = nj // B
    j = nj % B
    ts = pid_t * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    t_ok = ts < T
    dim_ok = dims < HEAD_DIM
    k, v, key_ok, vn = _key_tile_inputs(K, V, VN, KM, nj, hk, hkv, ts, dims, T, skn, skh, skt, skd,
                                        svn, svh, svt, svd, t_ok, dim_ok, BLOCK_N, HAS_MASK, VNORM)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dvn = tl.zeros([BLOCK_N], dtype=tl.float32)
    for i in range(pid_s, B, SPLITS):
        ni = grp * B + i
        for m0 in range(0, GQA * L, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            row_ok = rows < GQA * L
            h = hk * GQA + rows // L
            lrow = rows % L
            q = _row_tile(Q, ni, h, lrow, dims, sqn, sqh, sql, sqd, row_ok, dim_ok)
            do = _row_tile(DO, ni, h, lrow, dims, sdn, sdh, sdl, sdd, row_ok, dim_ok)
            stat = ((ni * H + h) * B + j) * L + lrow
            ddk, ddv, ddvn = _key_grads(q, do, k, v, key_ok, vn, Lse, Cf, Ds, Dn, stat, row_ok, qk_scale,
                                        VNORM, DOT_PRECISION)
            dk += ddk
            dv += ddv
            dvn += ddvn
    out = (pid_s * tl.num_programs(1) + nj * hkv + hk) * T + ts
    key_tile = t_ok[:, None] & dim_ok[None, :]
    tl.store(DK + out[:, None] * HEAD_DIM + dims[None, :], (dk * sm_scale).to(DK.dtype.element_ty), mask=key_tile)
    tl.store(DV + out[:, None] * HEAD_DIM + dims[None, :], dv.to(DV.dtype.element_ty), mask=key_tile)
    if VNORM != 0:
        tl.store(DVN + out, dvn, mask=t_ok)


# ---------------------------------------------------------------------------------------------- launch

@dataclass(frozen=True)
class Tiles:
    """One autotuning entry: a row tile (queries), a key tile (key kernel only), warps and pipeline stages."""
    block_m: int
    block_n: int = 0
    num_warps: int = 4
    num_stages: int = 2

    def triton(self) -> triton.Config:
        meta = {"BLOCK_M": self.block_m} | ({"BLOCK_N": self.block_n} if self.block_n else {})
        return triton.Config(meta, num_warps=self.num_warps, num_stages=self.num_stages)


def chunk_tiles(T: int) -> tuple[int, int]:
    """(T1, T2): a power-of-two tile and a power-of-two tail (0 if none) that cover T keys: 160 -> (128, 32)."""
    t1 = max(16, 1 << (T.bit_length() - 1))
    rest = T - t1
    return t1, (0 if rest <= 0 else max(16, triton.next_power_of_2(rest)))


def row_tiles(head_dim: int, dtype: torch.dtype, T: int) -> list[Tiles]:
    """Forward / query-backward entries: smaller row tiles for wide heads, fp32 and long chunks (registers)."""
    width = triton.next_power_of_2(head_dim) * (4 if dtype == torch.float32 else 2) * sum(chunk_tiles(T)) // 256
    if width <= 128:  # e.g. bf16, d = 64, T = 160 (256 keys of tile)
        return [Tiles(64, num_warps=4, num_stages=2), Tiles(64, num_warps=8, num_stages=2),
                Tiles(128, num_warps=8, num_stages=2), Tiles(32, num_warps=4, num_stages=3)]
    if width <= 256:
        return [Tiles(32, num_warps=4, num_stages=2), Tiles(64, num_warps=8, num_stages=2),
                Tiles(16, num_warps=4, num_stages=2)]
    return [Tiles(16, num_warps=4, num_stages=1), Tiles(32, num_warps=8, num_stages=1)]


def key_tiles(head_dim: int, dtype: torch.dtype) -> list[Tiles]:
    """Key-backward entries: key tiles of >= 64 (wgmma's M), row tiles sized by the head width."""
    width = triton.next_power_of_2(head_dim) * (4 if dtype == torch.float32 else 2)
    if width <= 128:
        return [Tiles(64, 64, num_warps=4), Tiles(32, 64, num_warps=4), Tiles(64, 128, num_warps=8),
                Tiles(64, 64, num_warps=8, num_stages=3)]
    if width <= 256:
        return [Tiles(32, 64, num_warps=4), Tiles(64, 64, num_warps=8), Tiles(32, 128, num_warps=8)]
    return [Tiles(16, 64, num_warps=4, num_stages=1), Tiles(32, 64, num_warps=8, num_stages=1)]


FORCED: dict[str, Tiles] = {}
"""Kernel name -> the entry to run instead of autotuning (tests run every entry in Triton's interpreter)."""
_AUTOTUNED: dict = {}
AUTOTUNE_KEY = ["H", "L", "T", "B"]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _launch(kernel, entries: list[Tiles], grid, args: tuple, meta: dict) -> None:
    """Run `kernel` with the forced entry, the first one (interpreter) or the autotuned one (GPU)."""
    name = kernel.fn.__name__
    if name in FORCED or _interpreting():
        tiles = FORCED.get(name, entries[0])
        config = tiles.triton()
        kernel[grid(config.kwargs)](*args, **meta, **config.kwargs, num_warps=tiles.num_warps,
                                    num_stages=tiles.num_stages)
        return
    key = (name, tuple(entries))
    if key not in _AUTOTUNED:
        _AUTOTUNED[key] = triton.autotune(configs=[e.triton() for e in entries], key=AUTOTUNE_KEY)(kernel)
    _AUTOTUNED[key][grid](*args, **meta)


def packed_forward(q, k, v, vn, w, key_mask, flags, vnorm_mode, scaling, stats, out, dot_precision: str) -> None:
    """Fill `out` and `stats` (log-sum-exp, then V-norm means if any) as the split forward does."""
    N, H, L, d = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    B = w.shape[1]
    t1, t2 = chunk_tiles(T)
    meta = dict(GQA=H // Hkv, HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)), T1=t1, T2=t2,
                HAS_MASK=key_mask is not None, VNORM=vnorm_mode, EPS=V_NORM_EPS, DOT_PRECISION=dot_precision)
    spare = stats  # any pointer where an input is absent: never read then
    rows = (H // Hkv) * L
    _launch(_packed_forward_kernel, row_tiles(d, q.dtype, T),
            lambda c: (triton.cdiv(rows, c["BLOCK_M"]), N * Hkv),
            (q, k, v, vn if vn is not None else spare, w, key_mask if key_mask is not None else spare,
             flags if flags is not None else spare, out, stats[0], stats[-1],
             *_strides(q), *_strides(k), *_strides(v), *_strides(out), H, L, T, B, scaling * LOG2E), meta)


def packed_backward(q, k, v, vn, w, key_mask, flags, vnorm_mode, scaling, stats, dout, dot_precision: str):
    """(dq, dk, dv, d||v|| or None, coefficients [4, N, H, B, L]) with dk/dv in the inputs' dtype."""
    N, H, L, d = q.shape
    Hkv, T = k.shape[1], k.shape[2]
    B = w.shape[1]
    gqa = H // Hkv
    t1, t2 = chunk_tiles(T)
    common = dict(GQA=gqa, HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)), HAS_MASK=key_mask is not None,
                  VNORM=vnorm_mode, DOT_PRECISION=dot_precision)
    coeff = torch.empty(4, N, H, B, L, device=q.device, dtype=torch.float32)  # c, dn, D, dw-term
    dq = torch.empty_like(q)
    spare = stats
    mask = key_mask if key_mask is not None else spare
    vn_arg = vn if vn is not None else spare
    rows = gqa * L
    _launch(_packed_backward_query_kernel, row_tiles(d, q.dtype, T),
            lambda c: (triton.cdiv(rows, c["BLOCK_M"]), N * Hkv),
            (q, k, v, vn_arg, w, mask, flags if flags is not None else spare, dout, dq, stats[0], stats[-1],
             coeff[0], coeff[1], coeff[2], coeff[3], *_strides(q), *_strides(k), *_strides(v), *_strides(dout),
             *_strides(dq), H, L, T, B, scaling * LOG2E, scaling),
            common | dict(T1=t1, T2=t2, EPS=V_NORM_EPS))
    splits = key_splits(triton.cdiv(T, 64) * N * Hkv, B, q.device)
    partial = () if splits == 1 else (splits,)  # fp32 partial sums over the query chunks, added up below
    dk = torch.empty(*partial, N, Hkv, T, d, device=q.device, dtype=torch.float32 if partial else k.dtype)
    dv = torch.empty(*partial, N, Hkv, T, d, device=q.device, dtype=torch.float32 if partial else v.dtype)
    dvn = torch.empty(*partial, N, Hkv, T, device=q.device, dtype=torch.float32) if vn is not None else None
    _launch(_packed_backward_key_kernel, key_tiles(d, q.dtype),
            lambda c: (triton.cdiv(T, c["BLOCK_N"]), N * Hkv, splits),
            (q, k, v, vn_arg, mask, dout, dk, dv, dvn if dvn is not None else spare, stats[0], coeff[0], coeff[1],
             coeff[2], *_strides(q), *_strides(k), *_strides(v), *_strides(dout), H, L, T, B, splits,
             scaling * LOG2E, scaling), common)
    if partial:
        dk, dv = dk.sum(0).to(k.dtype), dv.sum(0).to(v.dtype)
        dvn = dvn.sum(0) if dvn is not None else None
    return dq, dk, dv, dvn, coeff


FORCED_SPLITS: int | None = None
"""Tests: the number of ways to split the query chunks in the key kernel, instead of what fills the GPU."""


def key_splits(programs: int, B: int, device: torch.device) -> int:
    """One key program per (key tile, chunk, key/value head) is few at small G*B (e.g. 3 x 16 x 2 = 96 programs at
    B=16 with 2 key/value heads, for 132 SMs): split each program's query chunks S ways so that there are at least
    two programs per SM, summing S fp32 partials of dk/dv afterwards. S = 1 (direct, in the inputs' dtype) when
    the grid is large enough."""
    if FORCED_SPLITS is not None:
        return max(1, min(B, FORCED_SPLITS))
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(B, triton.cdiv(2 * sms, programs)))


# ---------------------------------------------------------------------------------------------- ahead of time

def compile_packed_kernels(dtype: torch.dtype, head_dim: int, keys: int = 160, arch: int = 90,
                           gqa: int = 7) -> dict[str, dict]:
    """Compile every autotuning entry of the three packed kernels for an NVIDIA GPU of compute capability `arch`
    (no GPU needed). Per `kernel[entry]`: its shared memory in bytes and how many of its tile products compiled to
    Hopper's asynchronous warpgroup MMA (`wgmma` in the PTX) rather than mma.sync. Fails if one does not build."""
    from revela.attention_triton import _compile

    t1, t2 = chunk_tiles(keys)
    block_d = max(16, triton.next_power_of_2(head_dim))
    precision = "ieee" if dtype == torch.float32 else "tf32"
    base = {"GQA": gqa, "HEAD_DIM": head_dim, "BLOCK_D": block_d, "HAS_MASK": True, "VNORM": 2,
            "DOT_PRECISION": precision, "EPS": V_NORM_EPS}
    shared = {}
    for kernel, entries, extra in ((_packed_forward_kernel, row_tiles(head_dim, dtype, keys), {"T1": t1, "T2": t2}),
                                   (_packed_backward_query_kernel, row_tiles(head_dim, dtype, keys),
                                    {"T1": t1, "T2": t2}),
                                   (_packed_backward_key_kernel, key_tiles(head_dim, dtype), {})):
        for tiles in entries:
            constants = base | extra | tiles.triton().kwargs
            compiled = _compile(kernel, constants, dtype, arch, tiles.num_warps, tiles.num_stages,
                                frozenset({"DK", "DV"}))
            ptx = compiled.asm["ptx"]
            shared[f"{kernel.fn.__name__}[{tiles}]"] = {"shared": compiled.metadata.shared,
                                                         "wgmma": ptx.count("wgmma.mma_async"),
                                                         "mma_sync": ptx.count("mma.sync")}
    return shared
