"""Triton kernels of ``triton_hopper``: FlashAttention-2 forward and backward (dK/dV and dQ kernels).

One source serves every target: the constexpr ``TILES`` moves tiles through plain pointer arithmetic
(0: sm80/sm89, strides TMA cannot describe, the interpreter), tensor descriptors made in the kernel
(1: TMA), or host-made descriptors over the whole ``(batch, seqlen, heads, dim)`` tensor (2: TMA with
no per-program descriptor set-up; the sm90 default). No ``tl.make_block_ptr``: it is gone in Triton 3.9.

Visibility is the band ``lo <= j - i <= hi`` (``HAS_LO``/``HAS_HI`` off = unbounded). Key blocks
outside the band are never loaded; blocks wholly inside it run without mask arithmetic; the blocks
on the band's edges run a masked copy of the same inner loop. Softmax in base 2 with the scale
folded into one multiply. GQA: query head ``h`` reads key/value head ``h // GROUP``.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _dot(a, b, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``a @ b`` with fp32 accumulation. ``UPCAST`` (interpreter only) multiplies in fp32: the Triton 3.9
    interpreter gets bf16 dots wrong; bf16 values are exact in fp32, so the result is the same."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def _dot_acc(a, b, acc, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` in one MMA chain (no second fp32 tile in registers), ``UPCAST`` as in ``_dot``."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _to_e4m3(x, UPCAST: tl.constexpr):
    """float32 -> float8 e4m3 (values within its range). ``UPCAST`` (interpreter only) rounds to e4m3's
    3 mantissa bits in float32 first: the Triton 3.9 interpreter's cast drops the carry when rounding
    up crosses a power of two (31.8 -> 16 instead of 32). Ties round half up there, not to even."""
    if UPCAST:
        e = tl.floor(tl.math.log2(tl.maximum(tl.abs(x), 0.015625)))  # below 2**-6 e4m3 is subnormal
        step = tl.math.exp2(e - 3.0)
        x = tl.floor(x / step + 0.5) * step
    return x.to(tl.float8e4nv)


@triton.jit
def _quantize_tile(x, M, rotation_scale, BLOCK_D: tl.constexpr, ROTATE: tl.constexpr, UPCAST: tl.constexpr):
    """A tile ``x`` ``(rows, BLOCK_D)`` times ``M * rotation_scale`` if ``ROTATE`` (``M`` ``(BLOCK_D,
    BLOCK_D)`` holds ±1 in x's dtype: a tensor-core matmul with exact products), as e4m3 values and
    their one float32 scale ``amax / 448`` (value = e4m3 * scale)."""
    if ROTATE:
        cols = tl.arange(0, BLOCK_D)
        m = tl.load(M + cols[:, None] * BLOCK_D + cols[None, :])
        x = _dot(x, m, "tf32", UPCAST) * rotation_scale
    else:
        x = x.to(tl.float32)
    scale = tl.maximum(tl.max(tl.max(tl.abs(x), 1), 0), 1e-12) / 448.0
    return _to_e4m3(x / scale, UPCAST), scale


@triton.jit
def _tile(head, row0, seqlen, stride, dim, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, TILES: tl.constexpr):
    """Rows ``[row0, row0 + BLOCK_R)`` x ``[0, BLOCK_D)`` of one head; zeros outside ``seqlen x dim``."""
    if TILES == 2:
        desc, b, h = head
        return desc.load([b, row0, h, 0]).reshape([BLOCK_R, BLOCK_D])
    elif TILES == 1:
        return head.load([row0, 0])
    else:
        rows = row0 + tl.arange(0, BLOCK_R)
        cols = tl.arange(0, BLOCK_D)
        mask = (rows[:, None] < seqlen) & (cols[None, :] < dim)
        return tl.load(head + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _store_tile(head, row0, seqlen, stride, dim, value, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                TILES: tl.constexpr):  # fmt: skip
    if TILES == 2:
        desc, b, h = head
        desc.store([b, row0, h, 0], value.reshape([1, BLOCK_R, 1, BLOCK_D]))
    elif TILES == 1:
        head.store([row0, 0], value)
    else:
        rows = row0 + tl.arange(0, BLOCK_R)
        cols = tl.arange(0, BLOCK_D)
        mask = (rows[:, None] < seqlen) & (cols[None, :] < dim)
        tl.store(head + rows[:, None] * stride + cols[None, :], value, mask=mask)


@triton.jit
def _tile_t(head, col0, seqlen, stride, dim, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, TILES: tl.constexpr):
    """Of a transposed head (``dim`` rows of ``seqlen`` columns, FP8 V): ``[0, BLOCK_D) x [col0, col0 +
    BLOCK_C)``, zeros outside. Host descriptors are over ``(batch, dim, heads, seqlen)``."""
    if TILES == 2:
        desc, b, h = head
        return desc.load([b, 0, h, col0]).reshape([BLOCK_D, BLOCK_C])
    else:
        rows = tl.arange(0, BLOCK_D)
        cols = col0 + tl.arange(0, BLOCK_C)
        mask = (rows[:, None] < dim) & (cols[None, :] < seqlen)
        return tl.load(head + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _head(X, b, h, stride_b, stride_h, stride_s, seqlen, dim, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
          TILES: tl.constexpr):  # fmt: skip
    """One head's ``(seqlen, dim)`` rows: ``TILES`` 0 = a pointer, 1 = a descriptor made here (TMA), 2 =
    ``X`` is a host-made descriptor over ``(batch, seqlen, heads, dim)``, kept with its coordinates."""
    if TILES == 2:
        return X, b, h
    elif TILES == 1:
        return tl.make_tensor_descriptor(X + b * stride_b + h * stride_h, shape=[seqlen, dim], strides=[stride_s, 1],
                                         block_shape=[BLOCK_R, BLOCK_D])  # fmt: skip
    else:
        return X + b * stride_b + h * stride_h


@triton.jit
def _span(start0, start1, seqlen_other, band_lo, band_hi, OTHER_BLOCK: tl.constexpr,
          HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, ALIGN: tl.constexpr):  # fmt: skip
    """For one block of rows ``[start0, start1)`` of one axis, the range of the other axis it can see
    under ``lo <= other - row <= hi``, split as ``(first, full_first, full_last, last)``: blocks in
    ``[full_first, full_last)`` lie inside the band and inside ``seqlen_other``, and need no mask.
    ``ALIGN`` starts every block at a multiple of ``OTHER_BLOCK`` (FP8: one scale per such block)."""
    first = 0
    last = seqlen_other
    full_lo = 0
    full_hi = seqlen_other
    if HAS_LO:
        first = tl.maximum(start0 + band_lo, 0)
        if ALIGN:
            first = first // OTHER_BLOCK * OTHER_BLOCK
        full_lo = start1 - 1 + band_lo
    if HAS_HI:
        last = tl.minimum(start1 - 1 + band_hi + 1, seqlen_other)
        full_hi = start0 + band_hi + 1
    last = tl.maximum(last, first)
    full_first = first + tl.cdiv(tl.maximum(full_lo - first, 0), OTHER_BLOCK) * OTHER_BLOCK
    full_first = tl.minimum(full_first, last)
    full_end = tl.minimum(full_hi, last)
    n_full = tl.maximum(full_end - full_first, 0) // OTHER_BLOCK
    full_last = full_first + n_full * OTHER_BLOCK
    return first, full_first, full_last, last


@triton.jit
def _heaviest_first(ORDER):
    """A pattern walk's program: (block along the walked axis, batch*heads index). The grid's programs
    start in linear order; ``ORDER`` ranks the blocks by the tiles they visit, most first, and every
    head takes rank ``r`` before any takes ``r + 1``, so that a long list (a global token's row) starts
    early instead of finishing last."""
    n_heads = tl.num_programs(1)
    linear = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    return tl.load(ORDER + linear // n_heads), linear % n_heads


@triton.jit
def _query_program(heads_q, ORDER, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, HAS_HI: tl.constexpr,
                   SPARSE: tl.constexpr):  # fmt: skip
    """This program's first query row, its ``batch*heads_q + head`` index, batch, query head and K/V
    head. Under a causal-type band the last query blocks see the most keys: they run first; under a
    pattern, ``ORDER`` sets the order (``_heaviest_first``)."""
    if SPARSE:
        pid_m, bh = _heaviest_first(ORDER)
    else:
        pid_m = tl.program_id(0)
        if HAS_HI:
            pid_m = tl.num_programs(0) - 1 - pid_m
        bh = tl.program_id(1)
    h = bh % heads_q
    return pid_m * BLOCK_M, bh, bh // heads_q, h, h // GROUP


@triton.jit
def _part(part: tl.constexpr, first, full_first, full_last, last):
    """Of a span from ``_span``: the masked head (part 0), the unmasked middle (1), the masked tail (2)."""
    lo, hi = full_last, last
    if part == 0:
        lo, hi = first, full_first
    elif part == 1:
        lo, hi = full_first, full_last
    return lo, hi


@triton.jit
def _band_mask(rows, cols, seqlen_k, band_lo, band_hi, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr):
    rel = cols[None, :] - rows[:, None]
    mask = cols[None, :] < seqlen_k
    if HAS_LO:
        mask = mask & (rel >= band_lo)
    if HAS_HI:
        mask = mask & (rel <= band_hi)
    return mask


@triton.jit
def _scores(qk, qk_scale, softcap, HAS_SOFTCAP: tl.constexpr):
    """Scores in base 2 from raw ``q . k``, and ``tanh`` of the capped argument (for the backward)."""
    if HAS_SOFTCAP:
        t = 2.0 * tl.sigmoid(2.0 * qk * (qk_scale / softcap)) - 1.0  # tanh(x) without libdevice
        return t * softcap, t  # qk_scale already holds log2(e) * scale; softcap is in base-2 units
    else:
        return qk * qk_scale, qk


@triton.jit
def _fwd_block(acc, l_i, m_i, v_unit, q, k_head, v_head, offs_m, start_n, seqlen_k, stride_ks, stride_vs,
               head_dim, head_dim_v, band_lo, band_hi, qk_scale, softcap, k_scales, v_scales, keep,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, MASKED: tl.constexpr,
               HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, HAS_SOFTCAP: tl.constexpr, TILES: tl.constexpr,
               DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, FP8: tl.constexpr, P_SHIFT: tl.constexpr,
               HAS_KEEP: tl.constexpr):  # fmt: skip
    """One key block ``[start_n, start_n + BLOCK_N)`` of the online softmax. ``MASKED``: apply the band
    and the key length, and with ``HAS_KEEP`` also ``keep`` ``(BLOCK_M, BLOCK_N)`` (a sparsity pattern's
    element mask). ``FP8``: q, k, v are e4m3 with one scale per key block (``k_scales``/``v_scales``
    point at this head's row of them), v is stored transposed, and ``p`` is cast to e4m3 at
    ``2**P_SHIFT`` times its value so that it spans e4m3's range (the shift cancels in ``acc / l``; the
    lse removes it). ``acc`` is then kept in units of ``v_unit``, the scale of the last V block:
    rescaling it by the ratio of two scales lets each ``P @ V`` accumulate into it in place, as the
    16-bit path does."""
    k = _tile(k_head, start_n, seqlen_k, stride_ks, head_dim, BLOCK_N, BLOCK_D, TILES)
    qk = _dot(q, tl.trans(k), DOT_PRECISION, UPCAST)
    if FP8:
        s, _ = _scores(qk, qk_scale * tl.load(k_scales + start_n // BLOCK_N), softcap, HAS_SOFTCAP)
    else:
        s, _ = _scores(qk, qk_scale, softcap, HAS_SOFTCAP)
    if MASKED:
        offs_n = start_n + tl.arange(0, BLOCK_N)
        visible = _band_mask(offs_m, offs_n, seqlen_k, band_lo, band_hi, HAS_LO, HAS_HI)
        if HAS_KEEP:
            visible = visible & keep
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen nothing yet
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = m_new
    p = tl.math.exp2(s - (m_use - P_SHIFT)[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    if FP8:
        vt = _tile_t(v_head, start_n, seqlen_k, stride_vs, head_dim_v, BLOCK_DV, BLOCK_N, TILES)
        v_scale = tl.load(v_scales + start_n // BLOCK_N)
        acc = acc * (alpha * (v_unit / v_scale))[:, None]
        acc = _dot_acc(_to_e4m3(p, UPCAST), tl.trans(vt), acc, DOT_PRECISION, UPCAST)
        v_unit = v_scale
    else:
        v = _tile(v_head, start_n, seqlen_k, stride_vs, head_dim_v, BLOCK_N, BLOCK_DV, TILES)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_PRECISION, UPCAST)
    return acc, l_i, m_new, v_unit


@triton.jit
def _fwd_inner(acc, l_i, m_i, v_unit, q, k_head, v_head, offs_m, k_first, k_last, seqlen_k, stride_ks,
               stride_vs, head_dim, head_dim_v, band_lo, band_hi, qk_scale, softcap, k_scales, v_scales, row_lo,
               row_hi, k_code, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
               MASKED: tl.constexpr, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
               TILES: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, FP8: tl.constexpr,
               P_SHIFT: tl.constexpr, INTERVAL: tl.constexpr):  # fmt: skip
    """Key blocks ``[k_first, k_last)``, all masked or none (``_fwd_block``). ``INTERVAL``: masked
    blocks also keep only keys whose code lies in each row's ``[row_lo, row_hi]`` (``_interval_keep``)."""
    for start_n in tl.range(k_first, k_last, BLOCK_N):
        if INTERVAL and MASKED:
            keep = _interval_keep(row_lo, row_hi, k_code, start_n, seqlen_k, BLOCK_N)
            acc, l_i, m_i, v_unit = _fwd_block(acc, l_i, m_i, v_unit, q, k_head, v_head, offs_m, start_n, seqlen_k,
                                               stride_ks, stride_vs, head_dim, head_dim_v, band_lo, band_hi, qk_scale,
                                               softcap, k_scales, v_scales, keep, BLOCK_N, BLOCK_D, BLOCK_DV, MASKED,
                                               HAS_LO, HAS_HI, HAS_SOFTCAP, TILES, DOT_PRECISION, UPCAST, FP8,
                                               P_SHIFT, True)  # fmt: skip
        else:
            acc, l_i, m_i, v_unit = _fwd_block(acc, l_i, m_i, v_unit, q, k_head, v_head, offs_m, start_n, seqlen_k,
                                               stride_ks, stride_vs, head_dim, head_dim_v, band_lo, band_hi, qk_scale,
                                               softcap, k_scales, v_scales, None, BLOCK_N, BLOCK_D, BLOCK_DV, MASKED,
                                               HAS_LO, HAS_HI, HAS_SOFTCAP, TILES, DOT_PRECISION, UPCAST, FP8,
                                               P_SHIFT, False)  # fmt: skip
    return acc, l_i, m_i, v_unit


@triton.jit
def _interval_keep(row_lo, row_hi, k_code, start_n, seqlen_k, BLOCK_N: tl.constexpr):
    """``(rows, BLOCK_N)``: key ``j`` of ``[start_n, start_n + BLOCK_N)`` is kept for row ``i`` iff
    ``row_lo[i] <= k_code[j] <= row_hi[i]`` (an ``IntervalMask``; keys past the length never are)."""
    cols = start_n + tl.arange(0, BLOCK_N)
    code = tl.load(k_code + cols, mask=cols < seqlen_k, other=2147483647)
    return (code[None, :] >= row_lo[:, None]) & (code[None, :] <= row_hi[:, None])


@triton.jit
def _interval_rows(Q_LO, Q_HI, row_base, offs_m, seqlen_q):
    """The rows' ``[lo, hi]`` of an ``IntervalMask``; rows past the length see nothing."""
    in_rows = offs_m < seqlen_q
    lo = tl.load(Q_LO + row_base + offs_m, mask=in_rows, other=2147483647)
    hi = tl.load(Q_HI + row_base + offs_m, mask=in_rows, other=-1)
    return lo, hi


@triton.jit
def _load_span(SPANS, index):
    """``(first, full_first, full_last, last)`` precomputed on the host (``launch._interval_spans``)."""
    span = SPANS + index * 4
    return tl.load(span), tl.load(span + 1), tl.load(span + 2), tl.load(span + 3)


@triton.jit
def _pattern_keep(MASKS, mask_id, rows, cols, PATTERN_BLOCK: tl.constexpr):
    """A pattern tile's element mask at ``rows`` x ``cols`` (offsets inside the tile): the partial
    tile ``mask_id``'s, or everything when ``mask_id < 0`` (a full tile: tile 0 is read and ignored)."""
    keep = tl.load(MASKS + tl.maximum(mask_id, 0) * PATTERN_BLOCK * PATTERN_BLOCK + rows[:, None] * PATTERN_BLOCK
                   + cols[None, :]) != 0  # fmt: skip
    return keep | (mask_id < 0)


@triton.jit
def _walk(WALK, program):
    """A pattern walk's program ``program`` (along the walked axis): where its tiles start in
    ``TILE_START``/``TILE_MASK``, how many need a mask (they come first), and how many do not
    (``launch._pattern_walk``)."""
    begin = tl.load(WALK + program * 3)
    return begin, tl.load(WALK + program * 3 + 1), tl.load(WALK + program * 3 + 2)


@triton.jit
def _interval_setup(Q_LO, Q_HI, K_CODE, SPANS, bh, kv_head, offs_m, start_m, seqlen_q, seqlen_k, first, full_first,
                    full_last, last, BLOCK_M: tl.constexpr, INTERVAL: tl.constexpr):  # fmt: skip
    """A query program's span of keys and its rows' ``[lo, hi]`` under an ``IntervalMask`` (else the span
    given, and placeholders), and its K/V head's key codes."""
    row_lo, row_hi = offs_m, offs_m
    if INTERVAL:
        first, full_first, full_last, last = _load_span(SPANS, bh * tl.num_programs(0) + start_m // BLOCK_M)
        row_lo, row_hi = _interval_rows(Q_LO, Q_HI, bh * seqlen_q, offs_m, seqlen_q)
    return first, full_first, full_last, last, row_lo, row_hi, K_CODE + kv_head * seqlen_k


@triton.jit
def _fwd_sparse(acc, l_i, m_i, v_unit, q, k_head, v_head, offs_m, program, seqlen_k, stride_ks, stride_vs,
                head_dim, head_dim_v, band_lo, band_hi, qk_scale, softcap, k_scales, v_scales, WALK, TILE_START,
                TILE_MASK, MASKS, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, HAS_SOFTCAP: tl.constexpr, TILES: tl.constexpr,
                DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, FP8: tl.constexpr, P_SHIFT: tl.constexpr,
                PATTERN_BLOCK: tl.constexpr):  # fmt: skip
    """A block-sparse pattern's key tiles for this program's rows (``BLOCK_M`` and ``BLOCK_N`` divide
    ``PATTERN_BLOCK``), as listed on the host: first those that need a mask (a partial pattern tile's
    element mask ``MASKS[TILE_MASK[i]]``, uint8 ``(PATTERN_BLOCK, PATTERN_BLOCK)``, or the band's or the
    length's edge), then the unmasked ones in a loop of plain loads that the compiler pipelines."""
    begin, n_masked, n_full = _walk(WALK, program)
    rows = offs_m % PATTERN_BLOCK
    for i in range(begin, begin + n_masked):
        start_n = tl.load(TILE_START + i)
        keep = _pattern_keep(MASKS, tl.load(TILE_MASK + i), rows, start_n % PATTERN_BLOCK + tl.arange(0, BLOCK_N),
                             PATTERN_BLOCK)  # fmt: skip
        acc, l_i, m_i, v_unit = _fwd_block(
            acc, l_i, m_i, v_unit, q, k_head, v_head, offs_m, start_n, seqlen_k, stride_ks, stride_vs, head_dim,
            head_dim_v, band_lo, band_hi, qk_scale, softcap, k_scales, v_scales, keep, BLOCK_N, BLOCK_D, BLOCK_DV,
            True, HAS_LO, HAS_HI, HAS_SOFTCAP, TILES, DOT_PRECISION, UPCAST, FP8, P_SHIFT, True)  # fmt: skip
    for i in tl.range(begin + n_masked, begin + n_masked + n_full):
        acc, l_i, m_i, v_unit = _fwd_block(
            acc, l_i, m_i, v_unit, q, k_head, v_head, offs_m, tl.load(TILE_START + i), seqlen_k, stride_ks,
            stride_vs, head_dim, head_dim_v, band_lo, band_hi, qk_scale, softcap, k_scales, v_scales, None, BLOCK_N,
            BLOCK_D, BLOCK_DV, False, HAS_LO, HAS_HI, HAS_SOFTCAP, TILES, DOT_PRECISION, UPCAST, FP8, P_SHIFT,
            False)  # fmt: skip
    return acc, l_i, m_i, v_unit


@triton.jit
def attn_fwd(Q, K, V, Out, LSE, QS, KS, VS, WALK, TILE_START, TILE_MASK, MASKS, ORDER, Q_LO, Q_HI, K_CODE,
             SPANS,
             stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
             stride_vb, stride_vs, stride_vh, stride_ob, stride_os, stride_oh,
             seqlen_q, seqlen_k, heads_q, head_dim, head_dim_v, band_lo, band_hi, qk_scale, softcap,
             GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
             BLOCK_DV: tl.constexpr, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
             WRITE_LSE: tl.constexpr, TILES: tl.constexpr, DOT_PRECISION: tl.constexpr,
             UPCAST: tl.constexpr, FP8: tl.constexpr, OUT_DTYPE: tl.constexpr, P_SHIFT: tl.constexpr,
             SPARSE: tl.constexpr = False, PATTERN_BLOCK: tl.constexpr = 128,
             INTERVAL: tl.constexpr = False):  # fmt: skip
    """One program: ``BLOCK_M`` query rows of one (batch, query head); grid ``(cdiv(seqlen_q, BLOCK_M),
    batch*heads_q)``. ``FP8``: Q, K, V come from ``quantize_blocks`` (V transposed) with their scales
    ``QS`` ``(batch, heads_q, cdiv(seqlen_q, BLOCK_M))`` and ``KS``, ``VS`` ``(batch, heads_kv,
    cdiv(seqlen_k, BLOCK_N))``, and P is cast at ``2**P_SHIFT`` times its value (FA3 uses 8); otherwise
    the scales are unused and ``P_SHIFT`` is 0. (Quantizing Q here instead of in a prepass was tried:
    the rotation's matrix in shared memory halved the programs per SM, and it ran 12% slower.)
    ``SPARSE``: the key blocks come from a block-sparse pattern's lists (``_fwd_sparse``), the programs
    run in ``ORDER`` (``_heaviest_first``); else the pointers ``WALK`` .. ``ORDER`` are unused.
    ``INTERVAL``: an ``IntervalMask`` (``Q_LO``, ``Q_HI`` ``(batch*heads_q, seqlen_q)``, ``K_CODE``
    ``(batch*heads_kv, seqlen_k)`` int32) with each program's key span in ``SPANS`` ``(batch*heads_q,
    query blocks, 4)``; else those are unused."""
    start_m, bh, b, h, hk = _query_program(heads_q, ORDER, GROUP, BLOCK_M, HAS_HI, SPARSE)
    q_head = _head(Q, b, h, stride_qb, stride_qh, stride_qs, seqlen_q, head_dim, BLOCK_M, BLOCK_D, TILES)
    k_head = _head(K, b, hk, stride_kb, stride_kh, stride_ks, seqlen_k, head_dim, BLOCK_N, BLOCK_D, TILES)
    v_head = _head(V, b, hk, stride_vb, stride_vh, stride_vs, seqlen_k, head_dim_v, BLOCK_N, BLOCK_DV, TILES)
    o_head = _head(Out, b, h, stride_ob, stride_oh, stride_os, seqlen_q, head_dim_v, BLOCK_M, BLOCK_DV, TILES)
    k_blocks = tl.cdiv(seqlen_k, BLOCK_N)
    k_scales = KS + (b * (heads_q // GROUP) + hk) * k_blocks
    v_scales = VS + (b * (heads_q // GROUP) + hk) * k_blocks

    offs_m = start_m + tl.arange(0, BLOCK_M)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    v_unit = tl.full([], 1.0, tl.float32)  # FP8: acc's unit, the scale of the last V block seen
    q = _tile(q_head, start_m, seqlen_q, stride_qs, head_dim, BLOCK_M, BLOCK_D, TILES)
    if FP8:
        qk_scale = qk_scale * tl.load(QS + bh * tl.num_programs(0) + start_m // BLOCK_M)

    first, full_first, full_last, last = _span(start_m, start_m + BLOCK_M, seqlen_k, band_lo, band_hi,
                                               BLOCK_N, HAS_LO, HAS_HI, FP8)  # fmt: skip
    first, full_first, full_last, last, row_lo, row_hi, k_code = _interval_setup(
        Q_LO, Q_HI, K_CODE, SPANS, bh, b * (heads_q // GROUP) + hk, offs_m, start_m, seqlen_q, seqlen_k, first,
        full_first, full_last, last, BLOCK_M, INTERVAL)  # fmt: skip
    if SPARSE:
        acc, l_i, m_i, v_unit = _fwd_sparse(acc, l_i, m_i, v_unit, q, k_head, v_head, offs_m, start_m // BLOCK_M,
                                            seqlen_k, stride_ks, stride_vs, head_dim, head_dim_v, band_lo, band_hi,
                                            qk_scale, softcap, k_scales, v_scales, WALK, TILE_START, TILE_MASK, MASKS,
                                            BLOCK_N, BLOCK_D, BLOCK_DV, HAS_LO, HAS_HI, HAS_SOFTCAP, TILES,
                                            DOT_PRECISION, UPCAST, FP8, P_SHIFT, PATTERN_BLOCK)  # fmt: skip
    else:
        for part in tl.static_range(3):  # masked head, unmasked middle, masked tail
            lo_n, hi_n = _part(part, first, full_first, full_last, last)
            acc, l_i, m_i, v_unit = _fwd_inner(acc, l_i, m_i, v_unit, q, k_head, v_head, offs_m, lo_n, hi_n,
                                               seqlen_k, stride_ks, stride_vs, head_dim, head_dim_v, band_lo,
                                               band_hi, qk_scale, softcap, k_scales, v_scales, row_lo, row_hi,
                                               k_code, BLOCK_N, BLOCK_D, BLOCK_DV, part != 1, HAS_LO, HAS_HI,
                                               HAS_SOFTCAP, TILES, DOT_PRECISION, UPCAST, FP8, P_SHIFT,
                                               INTERVAL)  # fmt: skip

    empty = l_i == 0.0  # rows that see no key: output 0, lse -inf
    out = acc * (v_unit / tl.where(empty, 1.0, l_i))[:, None]
    _store_tile(o_head, start_m, seqlen_q, stride_os, head_dim_v, out.to(OUT_DTYPE), BLOCK_M, BLOCK_DV,
                TILES)  # fmt: skip
    if WRITE_LSE:
        log2_l = tl.math.log2(tl.where(empty, 1.0, l_i))
        lse = tl.where(empty, float("-inf"), (m_i - P_SHIFT + log2_l) * 0.6931471805599453)
        tl.store(LSE + bh * seqlen_q + offs_m, lse, mask=offs_m < seqlen_q)


@triton.jit
def _quantize_rows(X, Y, SCALE, M, blk, b, h, heads, stride_xb, stride_xs, stride_xh, stride_yb, stride_ys,
                   stride_yh, seqlen, dim, rotation_scale, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
                   ROTATE: tl.constexpr, TRANSPOSE: tl.constexpr, UPCAST: tl.constexpr,
                   PERMUTE_KEYS: tl.constexpr = False):  # fmt: skip
    """Rows ``[blk*BLOCK, (blk+1)*BLOCK)`` of head ``h`` of ``X`` ``(batch, seqlen, heads, dim)``, rotated
    if ``ROTATE`` (see ``_quantize_tile``), stored as e4m3 in ``Y`` ``(batch, seqlen_pad, heads,
    BLOCK_D)``, or if ``TRANSPOSE`` ``(batch, BLOCK_D, heads, seqlen_pad)`` (``stride_ys`` then steps a
    dim); rows past ``seqlen`` become zeros. The scale goes to ``SCALE[b, h, blk]``. ``PERMUTE_KEYS``
    (with ``TRANSPOSE``): each 32 keys in ``quant.p_operand_key_order`` (key ``16h + 8j + 2t + e`` to
    slot ``16h + 4t + 2j + e``; ``BLOCK`` is a multiple of 32)."""
    rows = blk * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < seqlen) & (cols[None, :] < dim)
    x = tl.load(X + b * stride_xb + h * stride_xh + rows[:, None] * stride_xs + cols[None, :], mask=mask, other=0.0)
    y, scale = _quantize_tile(x, M, rotation_scale, BLOCK_D, ROTATE, UPCAST)
    base = Y + b * stride_yb + h * stride_yh
    if TRANSPOSE:
        slots = rows
        if PERMUTE_KEYS:
            slots = (rows & ~31) | (rows & 16) | (((rows >> 1) & 3) << 2) | (((rows >> 3) & 1) << 1) | (rows & 1)
        tl.store(base + cols[:, None] * stride_ys + slots[None, :], tl.trans(y))
    else:
        tl.store(base + rows[:, None] * stride_ys + cols[None, :], y)
    tl.store(SCALE + (b * heads + h) * tl.cdiv(seqlen, BLOCK) + blk, scale)


@triton.jit
def quantize_qkv(Q, K, V, QY, KY, VY, QS, KS, VS, M,
                 stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                 stride_qyb, stride_qys, stride_qyh, stride_kyb, stride_kys, stride_kyh,
                 stride_vyb, stride_vys, stride_vyh, seqlen_q, seqlen_k, heads_q, heads_kv, dim, dim_v,
                 rotation_scale, BLOCK_Q: tl.constexpr, BLOCK_KV: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_DV: tl.constexpr, ROTATE: tl.constexpr, UPCAST: tl.constexpr,
                 PERMUTE_KEYS: tl.constexpr = False):  # fmt: skip
    """The FP8 prepass of Q, K and V in one launch (one read of each): Q and K rotated if ``ROTATE``, in
    tiles of ``BLOCK_Q`` and ``BLOCK_KV`` rows (the forward's tiles: one scale each), V in tiles of
    ``BLOCK_KV`` and transposed (its keys in ``quant.p_operand_key_order`` with ``PERMUTE_KEYS``). Grid
    ``(max blocks, batch*heads_q, 3)``; axis 2 picks the operand, and programs past an operand's blocks
    or heads return (a launch costs the host more than they do)."""
    blk = tl.program_id(0)
    bh = tl.program_id(1)
    which = tl.program_id(2)
    if which == 0:
        if blk < tl.cdiv(seqlen_q, BLOCK_Q):
            _quantize_rows(Q, QY, QS, M, blk, bh // heads_q, bh % heads_q, heads_q, stride_qb, stride_qs,
                           stride_qh, stride_qyb, stride_qys, stride_qyh, seqlen_q, dim, rotation_scale, BLOCK_Q,
                           BLOCK_D, ROTATE, False, UPCAST)  # fmt: skip
    elif bh < tl.num_programs(1) // heads_q * heads_kv and blk < tl.cdiv(seqlen_k, BLOCK_KV):
        if which == 1:
            _quantize_rows(K, KY, KS, M, blk, bh // heads_kv, bh % heads_kv, heads_kv, stride_kb, stride_ks,
                           stride_kh, stride_kyb, stride_kys, stride_kyh, seqlen_k, dim, rotation_scale, BLOCK_KV,
                           BLOCK_D, ROTATE, False, UPCAST)  # fmt: skip
        else:
            _quantize_rows(V, VY, VS, M, blk, bh // heads_kv, bh % heads_kv, heads_kv, stride_vb, stride_vs,
                           stride_vh, stride_vyb, stride_vys, stride_vyh, seqlen_k, dim_v, 1.0, BLOCK_KV,
                           BLOCK_DV, False, True, UPCAST, PERMUTE_KEYS)  # fmt: skip


@triton.jit
def _dkdv_block(dk, dv, k, v, q_head, do_head, offs_n, start_m, rows_base, LSE, DELTA, DQ_ACC, seqlen_q,
                stride_qs, stride_dos, head_dim, head_dim_v, band_lo, band_hi, qk_scale, softcap, keep_t,
                BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, MASKED: tl.constexpr,
                HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, HAS_SOFTCAP: tl.constexpr, TILES: tl.constexpr,
                DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ATOMIC_DQ: tl.constexpr,
                HAS_KEEP: tl.constexpr):  # fmt: skip
    """One query block ``[start_m, start_m + BLOCK_M)`` of a dK/dV program's keys ``offs_n``: adds its
    ``P^T dO`` to ``dv`` and ``dS^T Q`` to ``dk``. ``MASKED``: apply the band and, with ``HAS_KEEP``,
    ``keep_t`` ``(BLOCK_N, BLOCK_M)`` (a sparsity pattern's element mask, transposed)."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _tile(q_head, start_m, seqlen_q, stride_qs, head_dim, BLOCK_M, BLOCK_D, TILES)
    do = _tile(do_head, start_m, seqlen_q, stride_dos, head_dim_v, BLOCK_M, BLOCK_DV, TILES)
    in_rows = offs_m < seqlen_q
    lse = tl.load(LSE + rows_base + offs_m, mask=in_rows, other=0.0)
    lse = tl.where(lse == float("-inf"), 0.0, lse) * 1.4426950408889634
    delta = tl.load(DELTA + rows_base + offs_m, mask=in_rows, other=0.0)
    kq = _dot(k, tl.trans(q), DOT_PRECISION, UPCAST)  # [BLOCK_N, BLOCK_M]
    s, t = _scores(kq, qk_scale, softcap, HAS_SOFTCAP)
    p = tl.math.exp2(s - lse[None, :])
    if MASKED:
        mask = _band_mask(offs_n, offs_m, seqlen_q, -band_hi, -band_lo, HAS_HI, HAS_LO)
        if HAS_KEEP:
            mask = mask & keep_t
        p = tl.where(mask, p, 0.0)
    dv += _dot(p.to(do.dtype), do, DOT_PRECISION, UPCAST)
    dp = _dot(v, tl.trans(do), DOT_PRECISION, UPCAST)
    ds = p * (dp - delta[None, :])
    if HAS_SOFTCAP:
        ds = ds * (1.0 - t * t)
    dk += _dot(ds.to(q.dtype), q, DOT_PRECISION, UPCAST)
    if ATOMIC_DQ:
        dq = _dot(tl.trans(ds.to(k.dtype)), k, DOT_PRECISION, UPCAST)  # [BLOCK_M, BLOCK_D]
        cols = tl.arange(0, BLOCK_D)
        tl.atomic_add(DQ_ACC + (rows_base + offs_m)[:, None] * BLOCK_D + cols[None, :], dq,
                      mask=in_rows[:, None], sem="relaxed")  # fmt: skip
    return dk, dv


@triton.jit
def attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC, WALK, TILE_START, TILE_MASK, MASKS, ORDER, Q_LO, Q_HI,
                  K_CODE, SPANS,
                  stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                  stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
                  stride_dkb, stride_dks, stride_dkh, stride_dvb, stride_dvs, stride_dvh,
                  seqlen_q, seqlen_k, heads_kv, head_dim, head_dim_v, band_lo, band_hi, qk_scale, softcap,
                  GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_DV: tl.constexpr, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                  TILES: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                  ATOMIC_DQ: tl.constexpr, SPARSE: tl.constexpr = False,
                  PATTERN_BLOCK: tl.constexpr = 128, INTERVAL: tl.constexpr = False):  # fmt: skip
    """One program: ``BLOCK_N`` keys of one (batch, kv head), summing over the head's query group.

    Grid ``(cdiv(seqlen_k, BLOCK_N), batch*heads_kv)``; without ``ATOMIC_DQ`` no atomics, deterministic.
    ``ATOMIC_DQ`` also adds each block's ``dS^T K`` into ``DQ_ACC`` (float32 ``(batch, heads_q,
    seqlen_q, BLOCK_D)``, zeroed, unscaled) with atomics, so that no dQ kernel recomputes P and dP:
    two matmuls of seven fewer, in an order that varies from run to run. ``SPARSE``: only the query
    tiles a block-sparse pattern lets these keys see are visited, from the host's walk lists (``WALK``,
    ``TILE_START``, ``TILE_MASK``; masked ones first, as in ``_fwd_sparse``), key blocks in ``ORDER``
    (``_heaviest_first``). ``INTERVAL``: each query head's span of rows for these keys is
    ``SPANS[b*heads_q + h, key block]``, masked by the interval test at its ends; else those are unused."""
    if SPARSE:
        pid_n, bh = _heaviest_first(ORDER)
    else:
        pid_n, bh = tl.program_id(0), tl.program_id(1)
    start_n = pid_n * BLOCK_N
    b = bh // heads_kv
    hk = bh % heads_kv
    k_head = _head(K, b, hk, stride_kb, stride_kh, stride_ks, seqlen_k, head_dim, BLOCK_N, BLOCK_D, TILES)
    v_head = _head(V, b, hk, stride_vb, stride_vh, stride_vs, seqlen_k, head_dim_v, BLOCK_N, BLOCK_DV, TILES)
    k = _tile(k_head, start_n, seqlen_k, stride_ks, head_dim, BLOCK_N, BLOCK_D, TILES)
    v = _tile(v_head, start_n, seqlen_k, stride_vs, head_dim_v, BLOCK_N, BLOCK_DV, TILES)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    # rows that can see these keys: -hi <= i - j <= -lo (padded rows and keys contribute zero here)
    first, full_first, full_last, last = _span(start_n, start_n + BLOCK_N, seqlen_q, -band_hi, -band_lo,
                                               BLOCK_M, HAS_HI, HAS_LO, False)  # fmt: skip
    heads_q = heads_kv * GROUP
    cols = offs_n % PATTERN_BLOCK  # SPARSE: the keys' offsets inside their pattern block
    code = offs_n  # INTERVAL: the keys' codes (past the length: never visible)
    if INTERVAL:
        code = tl.load(K_CODE + bh * seqlen_k + offs_n, mask=offs_n < seqlen_k, other=2147483647)
    for g in range(GROUP):
        h = hk * GROUP + g
        q_head = _head(Q, b, h, stride_qb, stride_qh, stride_qs, seqlen_q, head_dim, BLOCK_M, BLOCK_D, TILES)
        do_head = _head(DO, b, h, stride_dob, stride_doh, stride_dos, seqlen_q, head_dim_v, BLOCK_M, BLOCK_DV,
                        TILES)  # fmt: skip
        rows_base = (b * heads_q + h) * seqlen_q
        if SPARSE:
            begin, n_masked, n_full = _walk(WALK, pid_n)
            for i in range(begin, begin + n_masked):
                start_m = tl.load(TILE_START + i)
                rows = start_m % PATTERN_BLOCK + tl.arange(0, BLOCK_M)
                keep_t = tl.trans(_pattern_keep(MASKS, tl.load(TILE_MASK + i), rows, cols, PATTERN_BLOCK))
                dk, dv = _dkdv_block(dk, dv, k, v, q_head, do_head, offs_n, start_m, rows_base, LSE, DELTA, DQ_ACC,
                                     seqlen_q, stride_qs, stride_dos, head_dim, head_dim_v, band_lo, band_hi,
                                     qk_scale, softcap, keep_t, BLOCK_M, BLOCK_D, BLOCK_DV, True, HAS_LO, HAS_HI,
                                     HAS_SOFTCAP, TILES, DOT_PRECISION, UPCAST, ATOMIC_DQ, True)  # fmt: skip
            for i in tl.range(begin + n_masked, begin + n_masked + n_full):
                dk, dv = _dkdv_block(dk, dv, k, v, q_head, do_head, offs_n, tl.load(TILE_START + i), rows_base, LSE,
                                     DELTA, DQ_ACC, seqlen_q, stride_qs, stride_dos, head_dim, head_dim_v, band_lo,
                                     band_hi, qk_scale, softcap, None, BLOCK_M, BLOCK_D, BLOCK_DV, False, HAS_LO,
                                     HAS_HI, HAS_SOFTCAP, TILES, DOT_PRECISION, UPCAST, ATOMIC_DQ,
                                     False)  # fmt: skip
        else:
            if INTERVAL:
                first, full_first, full_last, last = _load_span(SPANS, (b * heads_q + h) * tl.num_programs(0)
                                                                + start_n // BLOCK_N)  # fmt: skip
            for part in tl.static_range(3):
                lo_m, hi_m = _part(part, first, full_first, full_last, last)
                for start_m in tl.range(lo_m, hi_m, BLOCK_M):
                    if INTERVAL and part != 1:
                        row_lo, row_hi = _interval_rows(Q_LO, Q_HI, rows_base, start_m + tl.arange(0, BLOCK_M),
                                                        seqlen_q)  # fmt: skip
                        keep_t = (code[:, None] >= row_lo[None, :]) & (code[:, None] <= row_hi[None, :])
                        dk, dv = _dkdv_block(dk, dv, k, v, q_head, do_head, offs_n, start_m, rows_base, LSE, DELTA,
                                             DQ_ACC, seqlen_q, stride_qs, stride_dos, head_dim, head_dim_v, band_lo,
                                             band_hi, qk_scale, softcap, keep_t, BLOCK_M, BLOCK_D, BLOCK_DV, True,
                                             HAS_LO, HAS_HI, HAS_SOFTCAP, TILES, DOT_PRECISION, UPCAST, ATOMIC_DQ,
                                             True)  # fmt: skip
                    else:
                        dk, dv = _dkdv_block(dk, dv, k, v, q_head, do_head, offs_n, start_m, rows_base, LSE, DELTA,
                                             DQ_ACC, seqlen_q, stride_qs, stride_dos, head_dim, head_dim_v, band_lo,
                                             band_hi, qk_scale, softcap, None, BLOCK_M, BLOCK_D, BLOCK_DV, part != 1,
                                             HAS_LO, HAS_HI, HAS_SOFTCAP, TILES, DOT_PRECISION, UPCAST, ATOMIC_DQ,
                                             False)  # fmt: skip
    dk_head = _head(DK, b, hk, stride_dkb, stride_dkh, stride_dks, seqlen_k, head_dim, BLOCK_N, BLOCK_D, TILES)
    dv_head = _head(DV, b, hk, stride_dvb, stride_dvh, stride_dvs, seqlen_k, head_dim_v, BLOCK_N, BLOCK_DV,
                    TILES)  # fmt: skip
    dk = dk * (qk_scale * 0.6931471805599453)  # qk_scale holds log2(e) * scale
    _store_tile(dk_head, start_n, seqlen_k, stride_dks, head_dim, dk.to(k.dtype), BLOCK_N, BLOCK_D,
                TILES)  # fmt: skip
    _store_tile(dv_head, start_n, seqlen_k, stride_dvs, head_dim_v, dv.to(v.dtype), BLOCK_N, BLOCK_DV,
                TILES)  # fmt: skip


@triton.jit
def _dq_block(dq, q, do, lse, delta, k_head, v_head, offs_m, start_n, seqlen_k, stride_ks, stride_vs, head_dim,
              head_dim_v, band_lo, band_hi, qk_scale, softcap, keep, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_DV: tl.constexpr, MASKED: tl.constexpr, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr,
              HAS_SOFTCAP: tl.constexpr, TILES: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
              HAS_KEEP: tl.constexpr):  # fmt: skip
    """One key block ``[start_n, start_n + BLOCK_N)`` of a dQ program: adds its ``dS K`` to ``dq``.
    ``MASKED``: apply the band and, with ``HAS_KEEP``, ``keep`` (a pattern's element mask)."""
    k = _tile(k_head, start_n, seqlen_k, stride_ks, head_dim, BLOCK_N, BLOCK_D, TILES)
    v = _tile(v_head, start_n, seqlen_k, stride_vs, head_dim_v, BLOCK_N, BLOCK_DV, TILES)
    qk = _dot(q, tl.trans(k), DOT_PRECISION, UPCAST)
    s, t = _scores(qk, qk_scale, softcap, HAS_SOFTCAP)
    p = tl.math.exp2(s - lse[:, None])
    if MASKED:
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask = _band_mask(offs_m, offs_n, seqlen_k, band_lo, band_hi, HAS_LO, HAS_HI)
        if HAS_KEEP:
            mask = mask & keep
        p = tl.where(mask, p, 0.0)
    dp = _dot(do, tl.trans(v), DOT_PRECISION, UPCAST)
    ds = p * (dp - delta[:, None])
    if HAS_SOFTCAP:
        ds = ds * (1.0 - t * t)
    return dq + _dot(ds.to(k.dtype), k, DOT_PRECISION, UPCAST)


@triton.jit
def attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, Out, DLSE, WALK, TILE_START, TILE_MASK, MASKS, ORDER, Q_LO, Q_HI,
                K_CODE, SPANS,
                stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
                stride_dqb, stride_dqs, stride_dqh, stride_ob, stride_os, stride_oh,
                seqlen_q, seqlen_k, heads_q, head_dim, head_dim_v, band_lo, band_hi, qk_scale, softcap,
                GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_DV: tl.constexpr, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                TILES: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                SPARSE: tl.constexpr = False, PATTERN_BLOCK: tl.constexpr = 128,
                INTERVAL: tl.constexpr = False, MAKE_DELTA: tl.constexpr = False,
                HAS_DLSE: tl.constexpr = False):  # fmt: skip
    """One program: ``BLOCK_M`` query rows of one (batch, query head). Grid and order as the forward's;
    ``SPARSE`` and ``INTERVAL`` walk the pattern's lists or spans as the forward does. ``MAKE_DELTA``:
    the program computes its rows' ``delta`` from ``Out``, ``dO`` (and ``DLSE``) and stores it for the
    dK/dV kernel that runs next, which saves the delta pass's launch and its second read of dO."""
    start_m, bh, b, h, hk = _query_program(heads_q, ORDER, GROUP, BLOCK_M, HAS_HI, SPARSE)
    q_head = _head(Q, b, h, stride_qb, stride_qh, stride_qs, seqlen_q, head_dim, BLOCK_M, BLOCK_D, TILES)
    do_head = _head(DO, b, h, stride_dob, stride_doh, stride_dos, seqlen_q, head_dim_v, BLOCK_M, BLOCK_DV,
                    TILES)  # fmt: skip
    k_head = _head(K, b, hk, stride_kb, stride_kh, stride_ks, seqlen_k, head_dim, BLOCK_N, BLOCK_D, TILES)
    v_head = _head(V, b, hk, stride_vb, stride_vh, stride_vs, seqlen_k, head_dim_v, BLOCK_N, BLOCK_DV, TILES)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    in_rows = offs_m < seqlen_q
    q = _tile(q_head, start_m, seqlen_q, stride_qs, head_dim, BLOCK_M, BLOCK_D, TILES)
    do = _tile(do_head, start_m, seqlen_q, stride_dos, head_dim_v, BLOCK_M, BLOCK_DV, TILES)
    lse = tl.load(LSE + bh * seqlen_q + offs_m, mask=in_rows, other=0.0)
    lse = tl.where(lse == float("-inf"), 0.0, lse) * 1.4426950408889634
    if MAKE_DELTA:
        delta = _row_delta(Out, do, DLSE, b, h, bh, offs_m, stride_ob, stride_os, stride_oh, seqlen_q, head_dim_v,
                           BLOCK_DV, HAS_DLSE)  # fmt: skip
        tl.store(DELTA + bh * seqlen_q + offs_m, delta, mask=in_rows)
    else:
        delta = tl.load(DELTA + bh * seqlen_q + offs_m, mask=in_rows, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # padded keys are zero rows of K: they add nothing to dq, so only the band needs a mask
    first, full_first, full_last, last = _span(start_m, start_m + BLOCK_M, seqlen_k, band_lo, band_hi,
                                               BLOCK_N, HAS_LO, HAS_HI, False)  # fmt: skip
    first, full_first, full_last, last, row_lo, row_hi, k_code = _interval_setup(
        Q_LO, Q_HI, K_CODE, SPANS, bh, b * (heads_q // GROUP) + hk, offs_m, start_m, seqlen_q, seqlen_k, first,
        full_first, full_last, last, BLOCK_M, INTERVAL)  # fmt: skip
    if SPARSE:
        begin, n_masked, n_full = _walk(WALK, start_m // BLOCK_M)
        rows = offs_m % PATTERN_BLOCK
        for i in range(begin, begin + n_masked):
            start_n = tl.load(TILE_START + i)
            keep = _pattern_keep(MASKS, tl.load(TILE_MASK + i), rows, start_n % PATTERN_BLOCK + tl.arange(0, BLOCK_N),
                                 PATTERN_BLOCK)  # fmt: skip
            dq = _dq_block(dq, q, do, lse, delta, k_head, v_head, offs_m, start_n, seqlen_k, stride_ks, stride_vs,
                           head_dim, head_dim_v, band_lo, band_hi, qk_scale, softcap, keep, BLOCK_N, BLOCK_D, BLOCK_DV,
                           True, HAS_LO, HAS_HI, HAS_SOFTCAP, TILES, DOT_PRECISION, UPCAST, True)  # fmt: skip
        for i in tl.range(begin + n_masked, begin + n_masked + n_full):
            dq = _dq_block(dq, q, do, lse, delta, k_head, v_head, offs_m, tl.load(TILE_START + i), seqlen_k,
                           stride_ks, stride_vs, head_dim, head_dim_v, band_lo, band_hi, qk_scale, softcap, None,
                           BLOCK_N, BLOCK_D, BLOCK_DV, False, HAS_LO, HAS_HI, HAS_SOFTCAP, TILES, DOT_PRECISION,
                           UPCAST, False)  # fmt: skip
    else:
        for part in tl.static_range(3):
            lo_n, hi_n = _part(part, first, full_first, full_last, last)
            for start_n in tl.range(lo_n, hi_n, BLOCK_N):
                if INTERVAL and part != 1:
                    keep = _interval_keep(row_lo, row_hi, k_code, start_n, seqlen_k, BLOCK_N)
                    dq = _dq_block(dq, q, do, lse, delta, k_head, v_head, offs_m, start_n, seqlen_k, stride_ks,
                                   stride_vs, head_dim, head_dim_v, band_lo, band_hi, qk_scale, softcap, keep,
                                   BLOCK_N, BLOCK_D, BLOCK_DV, True, HAS_LO, HAS_HI, HAS_SOFTCAP, TILES,
                                   DOT_PRECISION, UPCAST, True)  # fmt: skip
                else:
                    dq = _dq_block(dq, q, do, lse, delta, k_head, v_head, offs_m, start_n, seqlen_k, stride_ks,
                                   stride_vs, head_dim, head_dim_v, band_lo, band_hi, qk_scale, softcap, None,
                                   BLOCK_N, BLOCK_D, BLOCK_DV, part != 1, HAS_LO, HAS_HI, HAS_SOFTCAP, TILES,
                                   DOT_PRECISION, UPCAST, False)  # fmt: skip
    dq_head = _head(DQ, b, h, stride_dqb, stride_dqh, stride_dqs, seqlen_q, head_dim, BLOCK_M, BLOCK_D, TILES)
    dq = dq * (qk_scale * 0.6931471805599453)
    _store_tile(dq_head, start_m, seqlen_q, stride_dqs, head_dim, dq.to(q.dtype), BLOCK_M, BLOCK_D,
                TILES)  # fmt: skip


@triton.jit
def _row_delta(Out, do, DLSE, b, h, bh, rows, stride_ob, stride_os, stride_oh, seqlen_q, head_dim_v,
               BLOCK_DV: tl.constexpr, HAS_DLSE: tl.constexpr):  # fmt: skip
    """``rowsum(dO * O) - dlse`` in float32 for ``rows`` of one (batch, query head); ``do`` ``(rows,
    BLOCK_DV)`` is already loaded, zero past ``head_dim_v`` and ``seqlen_q``."""
    cols = tl.arange(0, BLOCK_DV)
    mask = (rows[:, None] < seqlen_q) & (cols[None, :] < head_dim_v)
    o = tl.load(Out + b * stride_ob + h * stride_oh + rows[:, None] * stride_os + cols[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if HAS_DLSE:
        delta -= tl.load(DLSE + bh * seqlen_q + rows, mask=rows < seqlen_q, other=0.0)
    return delta


@triton.jit
def attn_bwd_delta(Out, DO, DLSE, DELTA, stride_ob, stride_os, stride_oh, stride_dob, stride_dos, stride_doh,
                   seqlen_q, heads_q, head_dim_v, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
                   HAS_DLSE: tl.constexpr):  # fmt: skip
    """``delta = rowsum(dO * O) - dlse`` in float32, ``(batch, heads_q, seqlen_q)``: one read of each.
    Only dQ by atomics needs it as a pass of its own; else the dQ kernel makes it (``MAKE_DELTA``)."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // heads_q
    h = bh % heads_q
    rows = start_m + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_DV)
    mask = (rows[:, None] < seqlen_q) & (cols[None, :] < head_dim_v)
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_dos + cols[None, :], mask=mask,
                 other=0.0)  # fmt: skip
    delta = _row_delta(Out, do, DLSE, b, h, bh, rows, stride_ob, stride_os, stride_oh, seqlen_q, head_dim_v, BLOCK_DV,
                       HAS_DLSE)  # fmt: skip
    tl.store(DELTA + bh * seqlen_q + rows, delta, mask=rows < seqlen_q)
