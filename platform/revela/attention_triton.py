"""Fused, exact in-batch attention in Triton (the CUDA path of revela.attention.inbatch_attention).

Per query row r of chunk i and every chunk j of its group, with p_jt = softmax_t(q_r . k_jt * scale) over j's real
keys, a_j = sum_t p_jt v_jt, n_j = sum_t p_jt ||v_jt|| and c_j = w_ij / (n_j + eps) (V-norm) or w_ij (none):

    out_r = sum_j c_j a_j

Forward (one program per block of query rows and head): for each chunk j an online softmax over j's key tiles,
then c_j a_j is added to the output on chip. It writes the per-(row, j) log-sum-exp (base 2) and n_j for backward.

Backward needs g_j = dout_r . a_j before any score gradient is known (c_j and the V-norm denominator depend on it):
    ds_jt = p_jt (c_j dout.v_jt + dn_j ||v_jt|| - D_j),  dn_j = -g_j c_j / (n_j + eps),  D_j = sum_t p_jt dp_jt
  - query kernel (per query block and head): per chunk j, one pass over j's keys for g_j, the coefficients
    (c_j, dn_j, D_j) stored for the key kernel, a second pass accumulating dq;
  - key kernel (per key block and query head): dk, dv and d||v|| over every query chunk of the group, written per
    query head and summed over each GQA group afterwards (no atomics, deterministic).
The gradient of ||v|| reaches v through autograd (the norm is computed outside the kernels), dw_ij = sum over
heads and rows of g_j / (n_j + eps) (or g_j), from the stored per-row terms.
A chunk j with no real key contributes nothing (as in the torch path).

These are the "split" kernels; revela.attention_packed holds the "packed" ones (whole-chunk key tiles, GQA heads
packed into rows, autotuned), the default for chunks of up to 256 tokens. `kernel_variant` (or
$REVELA_INBATCH_KERNEL) chooses; both compute the same statistics and gradients.
"""

from __future__ import annotations

import contextlib
import os

import torch

# Fused multiply-add contraction in the kernels (Triton 3.9 warns once until the choice is explicit).
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from revela.attention import V_NORM_EPS, compute_dtype

LOG2E = 1.4426950408889634

VNORM_OFF, VNORM_ON, VNORM_PER_GROUP = 0, 1, 2

KERNEL_VARIANTS = ("auto", "packed", "split")
_variant = [os.environ.get("REVELA_INBATCH_KERNEL", "auto")]


@contextlib.contextmanager
def kernel_variant(name: str):
    """Run the fused attention with one set of kernels: "packed" (revela.attention_packed: whole-chunk key tiles,
    GQA heads packed, autotuned), "split" (the kernels below) or "auto" (packed for chunks of at most
    attention_packed.MAX_KEYS keys). The default comes from $REVELA_INBATCH_KERNEL, else auto."""
    if name not in KERNEL_VARIANTS:
        raise ValueError(f"unknown in-batch kernel variant {name!r}; use one of {KERNEL_VARIANTS}")
    _variant.append(name)
    try:
        yield
    finally:
        _variant.pop()


def resolve_variant(keys: int) -> str:
    from revela.attention_packed import MAX_KEYS

    name = _variant[-1]
    if name not in KERNEL_VARIANTS:
        raise ValueError(f"REVELA_INBATCH_KERNEL={name!r}: use one of {KERNEL_VARIANTS}")
    if name == "auto":
        return "packed" if keys <= MAX_KEYS else "split"
    return name


@triton.jit
def _query_program(H, L, B, GQA: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    """What a program over (block of query rows, chunk x head) works on: chunk n, head h, its key/value head hk
    (of hkv), its group and position i in the group, and the row/dim indices with their bounds."""
    pid_m = tl.program_id(0)
    pid_nh = tl.program_id(1)
    n = pid_nh // H
    h = pid_nh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    return n, h, h // GQA, H // GQA, n // B, n % B, rows, dims, rows < L, dims < HEAD_DIM


@triton.jit
def _tile(P, n, h, rows, dims, sn, sh, sl, sd, row_ok, dim_ok):
    """The [rows, dims] tile of head h of chunk n in a [N, heads, L, d] tensor; zeros out of bounds."""
    return tl.load(P + n * sn + h * sh + rows[:, None] * sl + dims[None, :] * sd,
                   mask=row_ok[:, None] & dim_ok[None, :], other=0.0)


@triton.jit
def _score_tile(q, K, KM, k_base, m_base, t0, T, skt, skd, qk_scale, dims, dim_ok,
                BLOCK_N: tl.constexpr, HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Base-2 logits of a block of query rows against keys t0..t0+BLOCK_N of one chunk (-inf where no real key),
    the key positions, and the transposed key tile."""
    ts = t0 + tl.arange(0, BLOCK_N)
    ok = ts < T
    kt = tl.load(K + k_base + ts[None, :] * skt + dims[:, None] * skd, mask=ok[None, :] & dim_ok[:, None], other=0.0)
    s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
    if HAS_MASK:
        ok = ok & (tl.load(KM + m_base + ts, mask=ok, other=0) != 0)
    return tl.where(ok[None, :], s, float("-inf")), ts, kt


@triton.jit
def _v_norm_coefficients(w, nrm, g, on, VNORM: tl.constexpr, EPS: tl.constexpr):
    """(c, dn, D, dw-term) of one chunk j for a block of rows, given g = dout . a_j."""
    if VNORM == 0:
        c = w + tl.zeros_like(g)
        dn = tl.zeros_like(g)
        dsum = c * g
        gw = g
    else:
        denom = nrm + EPS
        c = w / denom
        dn = -g * c / denom
        dsum = c * g * (EPS / denom)  # = c g + dn n, without the cancellation
        gw = g / denom
        if VNORM == 2:
            c = tl.where(on, c, w)
            dn = tl.where(on, dn, 0.0)
            dsum = tl.where(on, dsum, c * g)
            gw = tl.where(on, gw, g)
    return c, dn, dsum, gw


@triton.jit
def _chunk_output(acc, l, nsum, m, w, on, Lse, Nrm, stat, row_ok, VNORM: tl.constexpr, EPS: tl.constexpr):
    """Chunk j's share of the output rows, c_j a_j, from its softmax sums (unnormalised values acc, mass l, V-norm
    sum nsum, max m); stores the rows' base-2 log-sum-exp and V-norm mean for the backward. A chunk of only padding
    (l = 0) contributes nothing and gets lse = inf."""
    empty = l == 0.0
    l_safe = tl.where(empty, 1.0, l)
    nrm = nsum / l_safe
    c, _dn, _dsum, _gw = _v_norm_coefficients(w, nrm, tl.zeros_like(nrm), on, VNORM, EPS)
    c = tl.where(empty, 0.0, c)
    tl.store(Lse + stat, tl.where(empty, float("inf"), m + tl.log2(l_safe)), mask=row_ok)
    if VNORM != 0:
        tl.store(Nrm + stat, nrm, mask=row_ok)
    return acc * (c / l_safe)[:, None]


@triton.jit
def _forward_kernel(
    Q, K, V, VN, W, KM, VF, Out, Lse, Nrm,
    sqn, sqh, sql, sqd, skn, skh, skt, skd, svn, svh, svt, svd, son, soh, sol, sod,
    H, L, T, B, qk_scale,
    GQA: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_MASK: tl.constexpr, VNORM: tl.constexpr, EPS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    n, h, hk, hkv, grp, i, rows, dims, row_ok, dim_ok = _query_program(H, L, B, GQA, HEAD_DIM, BLOCK_M, BLOCK_D)
    q = _tile(Q, n, h, rows, dims, sqn, sqh, sql, sqd, row_ok, dim_ok)
    on = False
    if VNORM == 2:
        on = tl.load(VF + grp) != 0
    out = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for j in range(0, B):
        nj = grp * B + j
        w = tl.load(W + (grp * B + i) * B + j)
        m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l = tl.zeros([BLOCK_M], dtype=tl.float32)
        nsum = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for t0 in range(0, T, BLOCK_N):
            s, ts, _kt = _score_tile(q, K, KM, nj * skn + hk * skh, nj * T, t0, T, skt, skd, qk_scale, dims,
                                     dim_ok, BLOCK_N, HAS_MASK, DOT_PRECISION)
            m_new = tl.maximum(m, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # all keys so far are padding
            alpha = tl.exp2(m - m_use)
            p = tl.exp2(s - m_use[:, None])
            l = l * alpha + tl.sum(p, 1)
            v = _tile(V, nj, hk, ts, dims, svn, svh, svt, svd, ts < T, dim_ok)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            if VNORM != 0:
                vn = tl.load(VN + (nj * hkv + hk) * T + ts, mask=ts < T, other=0.0)
                nsum = nsum * alpha + tl.sum(p * vn[None, :], 1)
            m = m_new
        out += _chunk_output(acc, l, nsum, m, w, on, Lse, Nrm, ((n * H + h) * B + j) * L + rows, row_ok, VNORM, EPS)
    tl.store(Out + n * son + h * soh + rows[:, None] * sol + dims[None, :] * sod, out.to(Out.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])


@triton.jit
def _backward_query_kernel(
    Q, K, V, VN, W, KM, VF, DO, DQ, Lse, Nrm, Cf, Dn, Ds, Gw,
    sqn, sqh, sql, sqd, skn, skh, skt, skd, svn, svh, svt, svd, sdn, sdh, sdl, sdd, sgn, sgh, sgl, sgd,
    H, L, T, B, qk_scale, sm_scale,
    GQA: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_MASK: tl.constexpr, VNORM: tl.constexpr, EPS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    n, h, hk, hkv, grp, i, rows, dims, row_ok, dim_ok = _query_program(H, L, B, GQA, HEAD_DIM, BLOCK_M, BLOCK_D)
    q = _tile(Q, n, h, rows, dims, sqn, sqh, sql, sqd, row_ok, dim_ok)
    do = _tile(DO, n, h, rows, dims, sdn, sdh, sdl, sdd, row_ok, dim_ok)
    on = False
    if VNORM == 2:
        on = tl.load(VF + grp) != 0
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for j in range(0, B):
        nj = grp * B + j
        k_base = nj * skn + hk * skh
        v_base = nj * svn + hk * svh
        w = tl.load(W + (grp * B + i) * B + j)
        stat = ((n * H + h) * B + j) * L + rows
        lse = tl.load(Lse + stat, mask=row_ok, other=float("inf"))
        nrm = tl.zeros([BLOCK_M], dtype=tl.float32)
        if VNORM != 0:
            nrm = tl.load(Nrm + stat, mask=row_ok, other=0.0)
        g = tl.zeros([BLOCK_M], dtype=tl.float32)
        for t0 in range(0, T, BLOCK_N):  # g_j = dout . a_j
            s, ts, _kt = _score_tile(q, K, KM, k_base, nj * T, t0, T, skt, skd, qk_scale, dims, dim_ok,
                                     BLOCK_N, HAS_MASK, DOT_PRECISION)
            p = tl.exp2(s - lse[:, None])
            vt = tl.load(V + v_base + ts[None, :] * svt + dims[:, None] * svd,
                         mask=(ts < T)[None, :] & dim_ok[:, None], other=0.0)
            g += tl.sum(p * tl.dot(do, vt, input_precision=DOT_PRECISION), 1)
        c, dn, dsum, gw = _v_norm_coefficients(w, nrm, g, on, VNORM, EPS)
        tl.store(Cf + stat, c, mask=row_ok)
        tl.store(Ds + stat, dsum, mask=row_ok)
        tl.store(Gw + stat, gw, mask=row_ok)
        if VNORM != 0:
            tl.store(Dn + stat, dn, mask=row_ok)
        for t0 in range(0, T, BLOCK_N):  # dq
            s, ts, kt = _score_tile(q, K, KM, k_base, nj * T, t0, T, skt, skd, qk_scale, dims, dim_ok,
                                    BLOCK_N, HAS_MASK, DOT_PRECISION)
            p = tl.exp2(s - lse[:, None])
            t_ok = ts < T
            vt = tl.load(V + v_base + ts[None, :] * svt + dims[:, None] * svd,
                         mask=t_ok[None, :] & dim_ok[:, None], other=0.0)
            ds = p * (c[:, None] * tl.dot(do, vt, input_precision=DOT_PRECISION) - dsum[:, None])
            if VNORM != 0:
                vn = tl.load(VN + (nj * hkv + hk) * T + ts, mask=t_ok, other=0.0)
                ds += p * (dn[:, None] * vn[None, :])
            dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=DOT_PRECISION)
    tl.store(DQ + n * sgn + h * sgh + rows[:, None] * sgl + dims[None, :] * sgd,
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


@triton.jit
def _key_tile_inputs(K, V, VN, KM, nj, hk, hkv, ts, dims, T, skn, skh, skt, skd, svn, svh, svt, svd, t_ok, dim_ok,
                     BLOCK_N: tl.constexpr, HAS_MASK: tl.constexpr, VNORM: tl.constexpr):
    """What a key-side program keeps on chip for its tile of keys ts of chunk nj, key/value head hk: the key and
    value tiles, which keys are real, and the keys' stored V-norm statistic (zeros without V-norm)."""
    k = _tile(K, nj, hk, ts, dims, skn, skh, skt, skd, t_ok, dim_ok)
    v = _tile(V, nj, hk, ts, dims, svn, svh, svt, svd, t_ok, dim_ok)
    key_ok = t_ok
    if HAS_MASK:
        key_ok = key_ok & (tl.load(KM + nj * T + ts, mask=t_ok, other=0) != 0)
    vn = tl.zeros([BLOCK_N], dtype=tl.float32)
    if VNORM != 0:
        vn = tl.load(VN + (nj * hkv + hk) * T + ts, mask=t_ok, other=0.0)
    return k, v, key_ok, vn


@triton.jit
def _key_grads(q, do, k, v, key_ok, vn, Lse, Cf, Ds, Dn, stat, row_ok, qk_scale,
               VNORM: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One block of query rows' contribution to a key tile's dk (before sm_scale), dv and d||v||."""
    lse = tl.load(Lse + stat, mask=row_ok, other=float("inf"))
    c = tl.load(Cf + stat, mask=row_ok, other=0.0)
    dsum = tl.load(Ds + stat, mask=row_ok, other=0.0)
    st = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
    pt = tl.exp2(tl.where(key_ok[:, None], st, float("-inf")) - lse[None, :])
    dv = tl.dot((pt * c[None, :]).to(do.dtype), do, input_precision=DOT_PRECISION)
    dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    dst = pt * (c[None, :] * dpt - dsum[None, :])
    dvn = tl.zeros_like(vn)
    if VNORM != 0:
        dn = tl.load(Dn + stat, mask=row_ok, other=0.0)
        dst += pt * (vn[:, None] * dn[None, :])
        dvn = tl.sum(pt * dn[None, :], 1)
    dk = tl.dot(dst.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv, dvn


@triton.jit
def _backward_key_kernel(
    Q, K, V, VN, KM, DO, DK, DV, DVN, Lse, Cf, Dn, Ds,
    sqn, sqh, sql, sqd, skn, skh, skt, skd, svn, svh, svt, svd, sdn, sdh, sdl, sdd,
    H, L, T, B, qk_scale, sm_scale,
    GQA: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_MASK: tl.constexpr, VNORM: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_nh = tl.program_id(1)
    nj = pid_nh // H
    h = pid_nh % H
    hk = h // GQA
    hkv = H // GQA
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
    for i in range(0, B):
        ni = grp * B + i
        for m0 in range(0, L, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            row_ok = rows < L
            q = _tile(Q, ni, h, rows, dims, sqn, sqh, sql, sqd, row_ok, dim_ok)
            do = _tile(DO, ni, h, rows, dims, sdn, sdh, sdl, sdd, row_ok, dim_ok)
            stat = ((ni * H + h) * B + j) * L + rows
            ddk, ddv, ddvn = _key_grads(q, do, k, v, key_ok, vn, Lse, Cf, Ds, Dn, stat, row_ok, qk_scale,
                                        VNORM, DOT_PRECISION)
            dk += ddk
            dv += ddv
            dvn += ddvn
    out = (nj * H + h) * T + ts
    key_tile = t_ok[:, None] & dim_ok[None, :]
    tl.store(DK + out[:, None] * BLOCK_D + dims[None, :], dk * sm_scale, mask=key_tile)
    tl.store(DV + out[:, None] * BLOCK_D + dims[None, :], dv, mask=key_tile)
    if VNORM != 0:
        tl.store(DVN + out, dvn, mask=t_ok)


def _launch_config(head_dim: int, dtype: torch.dtype) -> dict:
    """Tile sizes that keep every kernel within a Hopper SM's 227 KiB of shared memory (checked by a test that
    compiles for sm_90 on the CPU). fp32 runs exact ('ieee') dots: it is the precision tests compare with."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    fp32 = dtype == torch.float32
    # bytes per element of a tile row in shared memory, summed over the operands a kernel keeps resident
    row_bytes = block_d * (4 if fp32 else 2)
    block = 64 if row_bytes <= 256 else 32 if row_bytes <= 512 else 16
    return {"BLOCK_D": block_d, "BLOCK_M": block, "BLOCK_N": min(block, 32), "num_warps": 4,
            "DOT_PRECISION": "ieee" if fp32 else "tf32"}


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.stride())


class _FusedInBatchAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, vn, w, key_mask, flags, vnorm_mode, scaling):
        N, H, L, d = q.shape
        Hkv, T = k.shape[1], k.shape[2]
        G, B = w.shape[:2]
        cfg = _launch_config(d, q.dtype)
        stats = torch.empty(2 if vnorm_mode else 1, N, H, B, L, device=q.device, dtype=torch.float32)
        out = torch.empty_like(q)
        mask = key_mask if key_mask is not None else stats  # any pointer: unread when HAS_MASK is False
        vn_arg = vn if vn is not None else stats
        flags_arg = flags if flags is not None else stats
        common = dict(GQA=H // Hkv, HEAD_DIM=d, HAS_MASK=key_mask is not None, VNORM=vnorm_mode, **cfg)
        ctx.variant = resolve_variant(T)
        if ctx.variant == "packed":
            from revela.attention_packed import packed_forward

            packed_forward(q, k, v, vn, w, key_mask, flags, vnorm_mode, scaling, stats, out, cfg["DOT_PRECISION"])
        else:
            grid = (triton.cdiv(L, cfg["BLOCK_M"]), N * H)
            _forward_kernel[grid](
                q, k, v, vn_arg, w, mask, flags_arg, out, stats[0], stats[-1],
                *_strides(q), *_strides(k), *_strides(v), *_strides(out),
                H, L, T, B, scaling * LOG2E, EPS=V_NORM_EPS, **common)
        ctx.save_for_backward(q, k, v, vn, w, key_mask, flags, stats)
        ctx.vnorm_mode, ctx.scaling, ctx.common = vnorm_mode, scaling, common
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, vn, w, key_mask, flags, stats = ctx.saved_tensors
        N, H, L, d = q.shape
        Hkv, T = k.shape[1], k.shape[2]
        G, B = w.shape[:2]
        common, scaling = ctx.common, ctx.scaling
        if ctx.variant == "packed":
            from revela.attention_packed import packed_backward

            dq, dk, dv, dvn, coeff = packed_backward(q, k, v, vn, w, key_mask, flags, ctx.vnorm_mode, scaling, stats,
                                                     dout, common["DOT_PRECISION"])
            return dq, dk, dv, dvn, coeff[3].sum(dim=(1, 3)).view(G, B, B).to(w.dtype), None, None, None, None
        cfg = {key: common[key] for key in ("BLOCK_D", "BLOCK_M", "BLOCK_N", "num_warps", "DOT_PRECISION")}
        coeff = torch.empty(4, N, H, B, L, device=q.device, dtype=torch.float32)  # c, dn, D, dw-term
        dq = torch.empty_like(q)
        mask = key_mask if key_mask is not None else stats
        vn_arg = vn if vn is not None else stats
        flags_arg = flags if flags is not None else stats
        args = dict(GQA=common["GQA"], HEAD_DIM=d, HAS_MASK=common["HAS_MASK"], VNORM=common["VNORM"], **cfg)
        _backward_query_kernel[(triton.cdiv(L, cfg["BLOCK_M"]), N * H)](
            q, k, v, vn_arg, w, mask, flags_arg, dout, dq, stats[0], stats[-1], coeff[0], coeff[1], coeff[2],
            coeff[3], *_strides(q), *_strides(k), *_strides(v), *_strides(dout), *_strides(dq),
            H, L, T, B, scaling * LOG2E, scaling, EPS=V_NORM_EPS, **args)
        dk_heads = torch.empty(N, H, T, cfg["BLOCK_D"], device=q.device, dtype=torch.float32)
        dv_heads = torch.empty_like(dk_heads)
        dvn_heads = torch.empty(N, H, T, device=q.device, dtype=torch.float32) if vn is not None else stats
        _backward_key_kernel[(triton.cdiv(T, cfg["BLOCK_N"]), N * H)](
            q, k, v, vn_arg, mask, dout, dk_heads, dv_heads, dvn_heads, stats[0], coeff[0], coeff[1], coeff[2],
            *_strides(q), *_strides(k), *_strides(v), *_strides(dout),
            H, L, T, B, scaling * LOG2E, scaling, **args)
        gqa = H // Hkv

        def per_kv_head(t):  # [N, H, T, ...] -> summed over the query heads that share a key/value head
            return t.view(N, Hkv, gqa, *t.shape[2:]).sum(2)

        dk = per_kv_head(dk_heads[..., :d]).to(k.dtype)
        dv = per_kv_head(dv_heads[..., :d]).to(v.dtype)
        dvn = per_kv_head(dvn_heads) if vn is not None else None
        dw = coeff[3].sum(dim=(1, 3)).view(G, B, B).to(w.dtype)
        return dq, dk, dv, dvn, dw, None, None, None, None


SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def fused_inbatch_attention(query, key, value, doc_weights, key_mask, v_norm, scaling: float) -> torch.Tensor:
    """Inputs as checked by revela.attention.inbatch_attention (doc_weights [G, B, B]); v_norm a bool or [G] flags.
    Query, key and value are cast to revela.attention.compute_dtype (the autocast dtype under autocast, else their
    promoted dtype); the output is in that dtype, each gradient in its input's own dtype."""
    dtype = compute_dtype(query, key, value)
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"the Triton in-batch attention computes in fp16, bf16 or fp32, got {query.dtype}/"
                         f"{key.dtype}/{value.dtype}; use backend='torch' for {dtype}")
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    N, H, L, _ = query.shape
    if N * H * doc_weights.shape[1] * max(L, key.shape[2]) >= 2**31:
        raise ValueError("too many chunks x heads x tokens for 32-bit offsets: use fewer groups per forward")
    if torch.is_tensor(v_norm):
        mode, flags = VNORM_PER_GROUP, v_norm.to(device=query.device, dtype=torch.uint8).contiguous()
    else:
        mode, flags = (VNORM_ON if v_norm else VNORM_OFF), None
    vn = value.float().norm(dim=-1).contiguous() if mode != VNORM_OFF else None
    mask = key_mask.to(torch.uint8).contiguous() if key_mask is not None else None
    weights = doc_weights.float().contiguous()
    with torch.cuda.device(query.device) if query.is_cuda else contextlib.nullcontext():
        return _FusedInBatchAttention.apply(query, key, value, vn, weights, mask, flags, mode, scaling)


_FLOAT_ARGS = {"qk_scale", "sm_scale"}
_STAT_POINTERS = {"VN", "W", "Lse", "Nrm", "Cf", "Dn", "Ds", "Gw", "DK", "DV", "DVN"}
_FLAG_POINTERS = {"KM", "VF"}
_DATA_POINTERS = {"Q", "K", "V", "Out", "DO", "DQ"}
_DATA_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def compile_kernels(dtype: torch.dtype, head_dim: int, arch: int = 90, gqa: int = 7) -> dict[str, int]:
    """Compile the three kernels ahead of time for an NVIDIA GPU of compute capability `arch` (no GPU needed) with
    the tiles `_launch_config` picks; returns each kernel's shared memory in bytes. Fails if one does not build."""
    cfg = _launch_config(head_dim, dtype)
    constants = {"GQA": gqa, "HEAD_DIM": head_dim, "BLOCK_D": cfg["BLOCK_D"], "BLOCK_M": cfg["BLOCK_M"],
                 "BLOCK_N": cfg["BLOCK_N"], "HAS_MASK": True, "VNORM": VNORM_PER_GROUP,
                 "DOT_PRECISION": cfg["DOT_PRECISION"], "EPS": V_NORM_EPS}
    return {kernel.fn.__name__: _compile(kernel, constants, dtype, arch, cfg["num_warps"]).metadata.shared
            for kernel in (_forward_kernel, _backward_query_kernel, _backward_key_kernel)}


def _compile(kernel, constants: dict, dtype: torch.dtype, arch: int, num_warps: int, num_stages: int | None = None,
             data_pointers: frozenset = frozenset()):
    """`kernel` compiled for compute capability `arch` with these constexprs (`.metadata.shared`: its shared memory
    in bytes, `.asm["ptx"]`); `data_pointers` names further pointers in the data's dtype (else fp32 statistics)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    signature = {}
    for name in names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in data_pointers:
            signature[name] = "*" + _DATA_TYPES[dtype]
        elif name in _STAT_POINTERS:
            signature[name] = "*fp32"
        elif name in _FLAG_POINTERS:
            signature[name] = "*u8"
        elif name in _DATA_POINTERS:
            signature[name] = "*" + _DATA_TYPES[dtype]
        else:
            signature[name] = "fp32" if name in _FLOAT_ARGS else "i32"
    used = {k: v for k, v in constants.items() if k in names}
    options = {"num_warps": num_warps} | ({"num_stages": num_stages} if num_stages else {})
    return triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=used),
                          target=GPUTarget("cuda", arch, 32), options=options)
