"""The sm90 forward in Gluon: warp-specialized, FlashAttention-3 style.

Plain Triton cannot say who waits for what; Gluon can. A tile is ``CONSUMERS * BLOCK_M`` query rows
of one (batch, query head). A program runs one tile per round of ``nprog`` tiles (one tile when the grid
covers them all; persistent when it has one program per SM), or with ``SCHEDULE`` the tiles of a list the
host made (``launch._tile_schedule``: a causal-type band's tiles see unequal numbers of key blocks, and
dealing them out heaviest first to the least loaded program evens the programs out), with three
partitions:

- a loader warp issues the TMA loads of Q (one part per consumer, two buffers each where shared memory
  has room, so the ring does not drain while a consumer finishes a tile) and of K and V into a ring of
  ``STAGES`` buffers, each guarded by a "ready" mbarrier per operand and an "empty" mbarrier that
  every consumer arrives on when it is done with the buffer; a persistent program's loader runs ahead
  into the next tile while the consumers finish this one;
- two to four consumer warpgroups, ``BLOCK_M`` query rows each, run the asynchronous ``wgmma`` GEMMs
  and the online softmax. Inside a consumer (with ``OVERLAP``; without it, one block at a time, which
  takes fewer registers and lets four consumers fit), the GEMMs overlap the softmax: ``S = Q K_j^T`` and
  ``O += P_{j-1} V_{j-1}`` are issued together, the softmax of block ``j`` runs as soon as ``S``
  lands, while ``P V`` is still in flight (in the source: ptxas 13.4 schedules the wait for ``P V``
  above the softmax, and forcing it below measured slower; ``benchmarks/gluon_sass.py``, RESULTS.md).
  With ``PINGPONG`` two consumers take turns at issuing GEMMs, so
  that one's softmax runs while the other's GEMMs hold the tensor cores (FlashAttention-3's
  inter-warpgroup schedule); without it they drift apart on their own.

mbarrier phases are tracked by running counts (ring slots used, Q tiles loaded, paired GEMM issues), so
they carry from one tile to the next.

Serves the common case only: fp16/bf16, ``head_dim == head_dim_v`` in {64, 128}, no softcap, the
band unbounded below (full or causal-type attention), TMA-describable strides. ``launch.py`` sends
everything else to the Triton kernel.

With ``FP8`` the same program runs ``precision="fp8"`` (FlashAttention-3's low-precision forward) on the
prepass's e4m3 tiles, head dims 64, 128 and 256: one float32 scale per consumer's query rows (``qs``)
and per key block (``ks``, ``vs``), V transposed (the e4m3 ``wgmma`` takes its B operand K-major only),
P cast to e4m3 at ``2**P_SHIFT`` times its value (the shift cancels in ``acc / l``), and the
accumulator kept in units of the last V block's scale so that ``P V`` accumulates into it in place.

Gluon has no interpreter: CI compiles this kernel for sm90 (``tests/test_triton_gluon_compile.py``),
the GPU script runs it.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

# Triton 3.9 renamed the TMA copies; 3.6 (the H100 machines) has only the old names.
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global

LN2 = gl.constexpr(0.6931471805599453)


@gluon.jit
def _tile_coords(t, n_m_tiles, heads_q, GROUP: gl.constexpr, TILE_M: gl.constexpr, HAS_HI: gl.constexpr):
    """Tile ``t`` -> (first query row, batch*heads_q + head, batch, head, K/V head). Query tiles of one
    head are adjacent (they share K/V in L2); under a causal-type band the last ones, which see the
    most keys, come first."""
    pid_m = t % n_m_tiles
    if HAS_HI:
        pid_m = n_m_tiles - 1 - pid_m
    bh = t // n_m_tiles
    h = bh % heads_q
    return pid_m * TILE_M, bh, bh // heads_q, h, h // GROUP


@gluon.jit
def _round_tile(k):
    """The tile a program takes in round ``k`` of the walk: rounds of ``nprog`` consecutive tiles, in
    snake order (program p takes the p-th tile of even rounds and the p-th from the end of odd
    ones), so that a persistent program's causal tiles, heavy and light, even out over two rounds."""
    p = gl.program_id(0)
    nprog = gl.num_programs(0)
    return k * nprog + p + (k % 2) * (nprog - 1 - 2 * p)


@gluon.jit
def _walk_length(sched_ptr, n_tiles, SCHEDULE: gl.constexpr):
    """(tiles this program takes, where its list starts in ``sched_ptr``). ``SCHEDULE``: the host's
    list, int32 ``[nprog + 1 offsets, then the tiles of program 0, 1, ...]``; else rounds of the walk."""
    nprog = gl.num_programs(0)
    if SCHEDULE:
        p = gl.program_id(0)
        first = gl.load(sched_ptr + p)
        n_items = gl.load(sched_ptr + p + 1) - first
        base = first + nprog + 1
    else:
        n_items = gl.cdiv(n_tiles, nprog)
        base = 0
    return n_items, base


@gluon.jit
def _walk_tile(k, n_items, sched_ptr, base, n_tiles, SCHEDULE: gl.constexpr):
    """The tile of this program's ``k``-th step (``n_tiles`` or more: none)."""
    if SCHEDULE:  # noqa: SIM108 (a constexpr branch)
        t = gl.load(sched_ptr + base + k, mask=k < n_items, other=n_tiles)
    else:
        t = _round_tile(k)
    return t


@gluon.jit
def _key_blocks(row0, seqlen_k, band_hi, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HAS_HI: gl.constexpr):
    """Key blocks that query rows ``[row0, row0 + BLOCK_M)`` see, and how many of them lead unmasked."""
    last = seqlen_k
    full_end = seqlen_k
    if HAS_HI:
        last = gl.minimum(row0 + BLOCK_M + band_hi, seqlen_k)
        full_end = gl.minimum(row0 + band_hi + 1, seqlen_k)
    return gl.cdiv(gl.maximum(last, 0), BLOCK_N), gl.maximum(full_end, 0) // BLOCK_N


@gluon.jit
def _last_row0(m0, seqlen_q, BLOCK_M: gl.constexpr, CONSUMERS: gl.constexpr):
    """First row of the last consumer of the tile at ``m0`` that has query rows: in a short last tile
    the others have none, and neither load nor compute anything."""
    return m0 + BLOCK_M * gl.minimum(CONSUMERS - 1, (seqlen_q - 1 - m0) // BLOCK_M)


@gluon.jit
def _loader(shared, GROUP: gl.constexpr, HAS_HI: gl.constexpr, CONSUMERS: gl.constexpr, SCHEDULE: gl.constexpr):
    """One warp: per tile, Q's parts (each once its consumer has stored its last output from that
    buffer), then K and V block by block into the ring. With two Q buffers per consumer the wait is
    for the tile before the last, so the ring stays full across tile boundaries. ``shared``: as for
    ``_consumer``."""
    (q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, o_smem, q_bar, q_free, k_bar, v_bar, empty_bar, turn_bar,
     lse_ptr, qs_ptr, ks_ptr, vs_ptr, sched_ptr, seqlen_q, seqlen_k, heads_q, band_hi, qk_scale, n_m_tiles, n_tiles,
     q_blocks, kv_blocks) = shared  # fmt: skip
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[1]
    STAGES: gl.constexpr = k_smem.shape[0]
    FP8: gl.constexpr = q_desc.dtype.primitive_bitwidth == 8
    Q_BUFS: gl.constexpr = q_smem.shape[0] // CONSUMERS
    slot = 0  # ring slots filled so far
    n_done = 0  # tiles loaded so far
    n_items, base = _walk_length(sched_ptr, n_tiles, SCHEDULE)
    t_next = _walk_tile(0, n_items, sched_ptr, base, n_tiles, SCHEDULE)
    for k in range(n_items):
        t = t_next
        t_next = _walk_tile(k + 1, n_items, sched_ptr, base, n_tiles, SCHEDULE)  # loaded a step ahead
        if t < n_tiles:
            m0, bh, b, h, hk = _tile_coords(t, n_m_tiles, heads_q, GROUP, CONSUMERS * BLOCK_M, HAS_HI)
            for c in gl.static_range(CONSUMERS):
                qb = (n_done % Q_BUFS) * CONSUMERS + c
                # a fresh barrier's phase 1 counts as complete: the first wait on each buffer passes
                mbarrier.wait(q_free.index(qb), ((n_done // Q_BUFS) & 1) ^ 1)
                mbarrier.expect(q_bar.index(qb), q_desc.block_type.nbytes)
                _tma_load(q_desc, [b, m0 + c * BLOCK_M, h, 0], q_bar.index(qb), q_smem.index(qb))
            last_row0 = _last_row0(m0, seqlen_q, BLOCK_M, CONSUMERS)
            n_blocks, _ = _key_blocks(last_row0, seqlen_k, band_hi, BLOCK_M, BLOCK_N, HAS_HI)
            for i in range(n_blocks):
                s = slot % STAGES
                mbarrier.wait(empty_bar.index(s), ((slot // STAGES) & 1) ^ 1)
                mbarrier.expect(k_bar.index(s), k_desc.block_type.nbytes)
                _tma_load(k_desc, [b, i * BLOCK_N, hk, 0], k_bar.index(s), k_smem.index(s))
                mbarrier.expect(v_bar.index(s), v_desc.block_type.nbytes)
                if FP8:  # V^T: (batch, dim, heads, keys)
                    _tma_load(v_desc, [b, 0, hk, i * BLOCK_N], v_bar.index(s), v_smem.index(s))
                else:
                    _tma_load(v_desc, [b, i * BLOCK_N, hk, 0], v_bar.index(s), v_smem.index(s))
                slot += 1
            n_done += 1  # noqa: SIM113 (no enumerate in the kernel language)


@gluon.jit
def _softmax_step(s_raw, m_i, l_i, col0, rows, seqlen_k, band_hi, scale, masked, HAS_HI: gl.constexpr,
                  P_SHIFT: gl.constexpr):  # fmt: skip
    """One key block of the online softmax in base 2. ``s_raw`` ``(BLOCK_M, BLOCK_N)`` float32 raw
    ``q . k``, ``scale`` this block's (positive) factor to base-2 logits; the running max ``m_i`` is
    kept in logits, and the block's max is taken before scaling, so each score costs one fused
    multiply-add. Returns ``p`` (unnormalized, times ``2**P_SHIFT``), the new ``m_i``, ``l_i`` and
    ``alpha``, the factor that takes the accumulator from the old max to the new one."""
    if masked:  # one compare per score: each row's last visible key, relative to the block
        offs = gl.arange(0, s_raw.shape[1], layout=gl.SliceLayout(0, s_raw.type.layout))
        if HAS_HI:
            last = gl.minimum(rows + (band_hi - col0), seqlen_k - 1 - col0)
            keep = gl.expand_dims(offs, 0) <= gl.expand_dims(last, 1)
        else:
            keep = gl.expand_dims(offs < seqlen_k - col0, 0)
        s_raw = gl.where(keep, s_raw, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s_raw, axis=1) * scale)
    m_use = gl.where(m_new == float("-inf"), 0.0, m_new)  # rows that have seen nothing yet
    p = gl.exp2(s_raw * scale - gl.expand_dims(m_use - P_SHIFT, 1))
    alpha = gl.exp2(m_i - m_use)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, m_new, l_i, alpha


@gluon.jit
def _take_turn(turn_bar, c: gl.constexpr, k, n_issues_0, turns, PINGPONG: gl.constexpr):
    """Ping-pong, before this consumer's ``k``-th GEMM issue of a tile. The first ``n_issues_0``
    issues of the two consumers pair up (consumer 0's rows see no more keys than consumer 1's) and
    alternate, consumer 0 first: each waits for the other's previous paired issue, across tiles too.
    ``turns`` counts this consumer's paired issues so far (it sets the barrier's phase); at most one
    arrival is ever pending on a barrier, so the phase parity never aliases."""
    if PINGPONG:
        if c == 0:
            if turns > 0:
                mbarrier.wait(turn_bar.index(0), (turns - 1) & 1)
        else:
            if k < n_issues_0:
                mbarrier.wait(turn_bar.index(1), turns & 1)


@gluon.jit
def _pass_turn(turn_bar, c: gl.constexpr, k, n_issues_0, turns, PINGPONG: gl.constexpr):
    """After the ``k``-th issue: hand the turn to the other consumer; returns ``turns`` updated."""
    if PINGPONG:  # noqa: SIM102 (the kernel language has no short-circuit `and` on tensors)
        if k < n_issues_0:
            mbarrier.arrive(turn_bar.index(1 - c), count=1)
            turns += 1
    return turns


@gluon.jit
def _v_operand(v_smem, s, BLOCK_N: gl.constexpr, HEAD_D: gl.constexpr, FP8: gl.constexpr):
    """Ring slot ``s`` of V as the ``(BLOCK_N, HEAD_D)`` B operand of ``P V`` (FP8: a view of V^T)."""
    if FP8:
        return v_smem.index(s).reshape([HEAD_D, BLOCK_N]).permute((1, 0))
    else:
        return v_smem.index(s).reshape([BLOCK_N, HEAD_D])


@gluon.jit
def _p_operand(p, p_dtype: gl.constexpr, p_layout: gl.constexpr, PERMUTE_V: gl.constexpr):
    """P ``(BLOCK_M, BLOCK_N)`` float32 as the A operand of ``P V``. With ``PERMUTE_V`` (FP8; V^T's keys in
    ``quant.p_operand_key_order``) its columns are relabelled to match: slot ``16h + 4t + 2j + e`` of each
    32 takes column ``16h + 8j + 2t + e``, which a thread already holds, so the layout change needs no
    shuffles between threads."""
    x = p.to(p_dtype)
    if PERMUTE_V:
        x = gl.reshape(x, [p.shape[0], p.shape[1] // 32, 2, 2, 4, 2])  # (row, 32 keys, h, j, t, e)
        x = gl.reshape(gl.permute(x, (0, 1, 2, 4, 3, 5)), [p.shape[0], p.shape[1]])  # (row, 32 keys, h, t, j, e)
    return gl.convert_layout(x, p_layout)


@gluon.jit
def _consumer_tile(c: gl.constexpr, m0, bh, b, h, hk, slot, turns, q, o_buf, q_free, k_smem, v_smem, o_desc,
                   k_bar, v_bar, empty_bar, turn_bar, lse_ptr, qs_ptr, ks_ptr, vs_ptr, seqlen_q, seqlen_k, heads_q,
                   band_hi, qk_scale, q_blocks, kv_blocks, GROUP: gl.constexpr, BLOCK_M: gl.constexpr,
                   BLOCK_N: gl.constexpr, HEAD_D: gl.constexpr, STAGES: gl.constexpr, HAS_HI: gl.constexpr,
                   PINGPONG: gl.constexpr, CONSUMERS: gl.constexpr, O_APART: gl.constexpr,
                   FP8: gl.constexpr, OVERLAP: gl.constexpr, PERMUTE_V: gl.constexpr):  # fmt: skip
    """Query rows ``[m0 + c*BLOCK_M, m0 + (c+1)*BLOCK_M)`` of one tile, Q already in ``q``. ``slot``:
    ring slots consumed before this tile, ``turns`` paired GEMM issues; returns both updated. The
    output goes out through ``o_buf``: with ``O_APART`` a buffer of its own, and Q's buffer is released
    (``q_free``) once the last ``S`` lands; else Q's buffer, released by the caller after the store."""
    p_dtype: gl.constexpr = q.dtype
    K_INSTR: gl.constexpr = 32 if FP8 else 16  # a wgmma's K: 32 bytes of each operand row
    P_SHIFT: gl.constexpr = 8.0 if FP8 else 0.0  # P in [0, 256] spans e4m3's range; 16-bit P needs none
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, K_INSTR])  # fmt: skip
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_D, K_INSTR])  # fmt: skip
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=K_INSTR // 8)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)

    row0 = m0 + c * BLOCK_M
    rows = row0 + gl.arange(0, BLOCK_M, layout=row_s)
    n_blocks, full_blocks = _key_blocks(row0, seqlen_k, band_hi, BLOCK_M, BLOCK_N, HAS_HI)
    n_blocks = gl.where(row0 < seqlen_q, n_blocks, 0)  # a consumer past the last query row idles
    last_row0 = _last_row0(m0, seqlen_q, BLOCK_M, CONSUMERS)
    n_blocks_all, _ = _key_blocks(last_row0, seqlen_k, band_hi, BLOCK_M, BLOCK_N, HAS_HI)
    n_blocks_0, _ = _key_blocks(m0, seqlen_k, band_hi, BLOCK_M, BLOCK_N, HAS_HI)
    # S_0; S_i with P_{i-1} V; the last P V; unpaired when consumer 1 idles
    n_issues_0 = gl.where((n_blocks_0 > 0) & (last_row0 > m0), n_blocks_0 + 1, 0)

    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=row_s)
    l_i = gl.zeros([BLOCK_M], gl.float32, layout=row_s)
    acc = gl.zeros([BLOCK_M, HEAD_D], gl.float32, layout=o_layout)
    v_unit = gl.to_tensor(1.0)  # FP8: acc's unit, the scale of the last V block it holds
    # S's "accumulator" (ignored: use_acc=False) is a constant the compiler can rematerialize; the
    # last scores would instead stay live across the loop's back edge
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)
    if n_blocks > 0:
        scale = qk_scale
        kv_scales = (b * (heads_q // GROUP) + hk) * kv_blocks
        if FP8:
            scale = qk_scale * gl.load(qs_ptr + bh * q_blocks + row0 // BLOCK_M)
            v_unit = gl.load(vs_ptr + kv_scales)
        if OVERLAP:
            s = slot % STAGES
            mbarrier.wait(k_bar.index(s), (slot // STAGES) & 1)
            k = k_smem.index(s).reshape([BLOCK_N, HEAD_D]).permute((1, 0))
            _take_turn(turn_bar, c, 0, n_issues_0, turns, PINGPONG)
            s_raw = warpgroup_mma(q, k, s_zero, use_acc=False, is_async=True)
            turns = _pass_turn(turn_bar, c, 0, n_issues_0, turns, PINGPONG)
            s_raw = warpgroup_mma_wait(0, deps=(s_raw,))
            block_scale = scale
            if FP8:
                block_scale = scale * gl.load(ks_ptr + kv_scales)
            p, m_i, l_i, alpha = _softmax_step(s_raw, m_i, l_i, 0, rows, seqlen_k, band_hi, block_scale,
                                               full_blocks == 0, HAS_HI, P_SHIFT)  # fmt: skip
            p_op = _p_operand(p, p_dtype, p_layout, PERMUTE_V)  # carried in the operand's width: fewer registers
            for i in range(1, n_blocks):
                prev = (slot + i - 1) % STAGES
                s = (slot + i) % STAGES
                if FP8:  # issued early: the loads' latency hides behind the GEMMs
                    block_scale = scale * gl.load(ks_ptr + kv_scales + i)
                    v_next = gl.load(vs_ptr + kv_scales + i)
                mbarrier.wait(k_bar.index(s), ((slot + i) // STAGES) & 1)
                mbarrier.wait(v_bar.index(prev), ((slot + i - 1) // STAGES) & 1)
                k = k_smem.index(s).reshape([BLOCK_N, HEAD_D]).permute((1, 0))
                _take_turn(turn_bar, c, i, n_issues_0, turns, PINGPONG)
                s_raw = warpgroup_mma(q, k, s_zero, use_acc=False, is_async=True)
                acc = warpgroup_mma(p_op, _v_operand(v_smem, prev, BLOCK_N, HEAD_D, FP8), acc, is_async=True)
                turns = _pass_turn(turn_bar, c, i, n_issues_0, turns, PINGPONG)
                s_raw = warpgroup_mma_wait(1, deps=(s_raw,))  # S lands; P V may still run
                p, m_i, l_i, alpha = _softmax_step(s_raw, m_i, l_i, i * BLOCK_N, rows, seqlen_k, band_hi, block_scale,
                                                   i >= full_blocks, HAS_HI, P_SHIFT)  # fmt: skip
                acc = warpgroup_mma_wait(0, deps=(acc,))
                p_op = _p_operand(p, p_dtype, p_layout, PERMUTE_V)
                mbarrier.arrive(empty_bar.index(prev), count=1)
                if FP8:  # acc moves to the unit of the V block whose P V comes next
                    alpha = alpha * (v_unit / v_next)
                    v_unit = v_next
                acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
            if O_APART:  # every S has landed: the loader may bring the next tile's Q while P V and the store run
                mbarrier.arrive(q_free, count=1)
            prev = (slot + n_blocks - 1) % STAGES
            mbarrier.wait(v_bar.index(prev), ((slot + n_blocks - 1) // STAGES) & 1)
            _take_turn(turn_bar, c, n_blocks, n_issues_0, turns, PINGPONG)
            acc = warpgroup_mma(p_op, _v_operand(v_smem, prev, BLOCK_N, HEAD_D, FP8), acc, is_async=True)
            turns = _pass_turn(turn_bar, c, n_blocks, n_issues_0, turns, PINGPONG)
            acc = warpgroup_mma_wait(0, deps=(acc,))
            mbarrier.arrive(empty_bar.index(prev), count=1)
        else:  # one block at a time: S, softmax, P V; the other consumers fill the tensor cores meanwhile
            for i in range(n_blocks):
                s = (slot + i) % STAGES
                mbarrier.wait(k_bar.index(s), ((slot + i) // STAGES) & 1)
                k = k_smem.index(s).reshape([BLOCK_N, HEAD_D]).permute((1, 0))
                s_raw = warpgroup_mma(q, k, s_zero, use_acc=False, is_async=True)
                s_raw = warpgroup_mma_wait(0, deps=(s_raw,))
                p, m_i, l_i, alpha = _softmax_step(s_raw, m_i, l_i, i * BLOCK_N, rows, seqlen_k, band_hi, scale,
                                                   i >= full_blocks, HAS_HI, P_SHIFT)  # fmt: skip
                acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
                p_op = _p_operand(p, p_dtype, p_layout, PERMUTE_V)
                mbarrier.wait(v_bar.index(s), ((slot + i) // STAGES) & 1)
                acc = warpgroup_mma(p_op, _v_operand(v_smem, s, BLOCK_N, HEAD_D, FP8), acc, is_async=True)
                acc = warpgroup_mma_wait(0, deps=(acc,))
                mbarrier.arrive(empty_bar.index(s), count=1)
            if O_APART:
                mbarrier.arrive(q_free, count=1)
    elif O_APART:
        mbarrier.arrive(q_free, count=1)
    # the loader streams the blocks the other warpgroup needs: release them without reading
    for i in range(n_blocks, n_blocks_all):
        s = (slot + i) % STAGES
        mbarrier.wait(k_bar.index(s), ((slot + i) // STAGES) & 1)  # this round's load has been issued
        mbarrier.arrive(empty_bar.index(s), count=1)

    empty = l_i == 0.0  # rows that see no key: output 0, lse -inf
    inv = gl.convert_layout(v_unit / gl.where(empty, 1.0, l_i), row_o)
    out = (acc * gl.expand_dims(inv, 1)).to(o_buf.dtype)
    if O_APART:
        tma.store_wait(0)  # the previous tile's output has left the buffer
    o_buf.reshape([BLOCK_M, HEAD_D]).store(out)
    fence_async_shared()
    _tma_store(o_desc, [b, row0, h, 0], o_buf)
    lse = gl.where(empty, float("-inf"), (m_i - P_SHIFT + gl.log2(gl.where(empty, 1.0, l_i))) * LN2)
    gl.store(lse_ptr + bh * seqlen_q + rows, lse, mask=rows < seqlen_q)
    return slot + n_blocks_all, turns


@gluon.jit
def _consumer(c: gl.constexpr, shared, GROUP: gl.constexpr, HAS_HI: gl.constexpr, PINGPONG: gl.constexpr,
              CONSUMERS: gl.constexpr, O_APART: gl.constexpr, SCHEDULE: gl.constexpr, OVERLAP: gl.constexpr,
              PERMUTE_V: gl.constexpr):  # fmt: skip
    """One warpgroup: its ``BLOCK_M`` rows of each of this program's tiles. ``shared``: the runtime
    values every partition takes, in one tuple so that the partition lists name them once (a tuple
    would not keep the constexprs constant: the tile shapes are read off the descriptors and the ring)."""
    (q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, o_smem, q_bar, q_free, k_bar, v_bar, empty_bar, turn_bar,
     lse_ptr, qs_ptr, ks_ptr, vs_ptr, sched_ptr, seqlen_q, seqlen_k, heads_q, band_hi, qk_scale, n_m_tiles, n_tiles,
     q_blocks, kv_blocks) = shared  # fmt: skip
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[1]
    HEAD_D: gl.constexpr = k_desc.block_type.shape[3]
    STAGES: gl.constexpr = k_smem.shape[0]
    FP8: gl.constexpr = q_desc.dtype.primitive_bitwidth == 8
    Q_BUFS: gl.constexpr = q_smem.shape[0] // CONSUMERS
    o_buf = o_smem.index(c)
    slot = 0
    turns = 0
    n_done = 0
    n_items, base = _walk_length(sched_ptr, n_tiles, SCHEDULE)
    t_next = _walk_tile(0, n_items, sched_ptr, base, n_tiles, SCHEDULE)
    for k in range(n_items):
        t = t_next
        t_next = _walk_tile(k + 1, n_items, sched_ptr, base, n_tiles, SCHEDULE)  # loaded a step ahead
        if t < n_tiles:
            m0, bh, b, h, hk = _tile_coords(t, n_m_tiles, heads_q, GROUP, CONSUMERS * BLOCK_M, HAS_HI)
            qb = (n_done % Q_BUFS) * CONSUMERS + c
            q = q_smem.index(qb).reshape([BLOCK_M, HEAD_D])
            mbarrier.wait(q_bar.index(qb), (n_done // Q_BUFS) & 1)
            slot, turns = _consumer_tile(c, m0, bh, b, h, hk, slot, turns, q, o_buf, q_free.index(qb), k_smem,
                                          v_smem, o_desc, k_bar, v_bar, empty_bar, turn_bar, lse_ptr, qs_ptr, ks_ptr,
                                          vs_ptr, seqlen_q, seqlen_k, heads_q, band_hi, qk_scale, q_blocks, kv_blocks,
                                          GROUP, BLOCK_M, BLOCK_N, HEAD_D, STAGES, HAS_HI, PINGPONG, CONSUMERS,
                                          O_APART, FP8, OVERLAP, PERMUTE_V)  # fmt: skip
            if not O_APART:
                tma.store_wait(0)
                mbarrier.arrive(q_free.index(qb), count=1)  # the loader may bring the next tile's Q
            n_done += 1  # noqa: SIM113 (no enumerate in the kernel language)
    tma.store_wait(0)  # the buffer must outlive the last store


@gluon.jit
def attn_fwd_ws(q_desc, k_desc, v_desc, o_desc, lse_ptr, qs_ptr, ks_ptr, vs_ptr, sched_ptr, seqlen_q, seqlen_k,
                heads_q, band_hi, qk_scale, n_m_tiles, n_tiles, q_blocks, kv_blocks, GROUP: gl.constexpr,
                STAGES: gl.constexpr, HAS_HI: gl.constexpr, PINGPONG: gl.constexpr, CONSUMERS: gl.constexpr,
                CONSUMER_REGS: gl.constexpr, SCHEDULE: gl.constexpr = False, OVERLAP: gl.constexpr = True,
                PERMUTE_V: gl.constexpr = False):  # fmt: skip
    """Grid ``(programs,)`` over ``n_tiles = n_m_tiles * batch * heads_q`` tiles of ``CONSUMERS *
    BLOCK_M`` query rows (2 to 4 consumer warpgroups; ping-pong needs 2; ``OVERLAP=False`` is 16-bit
    only), ``n_m_tiles = cdiv(seqlen_q, CONSUMERS*BLOCK_M)``; ``num_warps=4`` (the first consumer).
    ``BLOCK_M``, ``BLOCK_N``, ``HEAD_D`` and ``FP8`` are read off the descriptors: over ``(batch,
    seqlen, heads, HEAD_D)`` with blocks ``(1, rows, 1, HEAD_D)``; ``lse`` float32 ``(batch,
    heads_q, seqlen_q)``. ``qk_scale`` is the softmax scale times log2(e); ``band_hi`` the causal-type
    offset (key - query <= band_hi) when ``HAS_HI``. ``FP8``: Q and K are e4m3, V is e4m3 ``(batch,
    HEAD_D, heads_kv, keys)`` with blocks ``(1, HEAD_D, 1, BLOCK_N)``, and the float32 scales are ``qs``
    ``(batch, heads_q, q_blocks)`` per ``BLOCK_M`` query rows and ``ks``, ``vs`` ``(batch, heads_kv,
    kv_blocks)`` per ``BLOCK_N`` keys; otherwise the scale pointers and counts are unused. ``SCHEDULE``:
    ``sched_ptr`` int32 ``[nprog + 1 offsets, then each program's tiles]`` (else unused)."""
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[1]
    HEAD_D: gl.constexpr = k_desc.block_type.shape[3]
    FP8: gl.constexpr = q_desc.dtype.primitive_bitwidth == 8
    gl.static_assert(
        (CONSUMERS == 2) | ((CONSUMERS >= 3) & (CONSUMERS <= 4) & (not PINGPONG)),
        "2 consumers, or 3-4 without ping-pong",
    )
    gl.static_assert(OVERLAP | ((not FP8) & (not PINGPONG)), "FP8 and ping-pong overlap the GEMMs")
    gl.static_assert(FP8 | (not PERMUTE_V), "V^T's keys are permuted in FP8 only")
    dtype: gl.constexpr = q_desc.dtype
    k_smem = gl.allocate_shared_memory(dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    # the output gets staging buffers of its own where shared memory has room (d=64; FP8, whose Q
    # buffers are too narrow for it), so that Q's can take the next tile's Q early; else Q's stage it
    ROW_BYTES: gl.constexpr = HEAD_D * dtype.primitive_bitwidth // 8
    QQKV_BYTES: gl.constexpr = (2 * CONSUMERS * BLOCK_M + 2 * STAGES * BLOCK_N) * ROW_BYTES  # two Q sets, the ring
    O_APART: gl.constexpr = FP8 | (QQKV_BYTES <= 200 * 1024)
    # and, where it still has room, Q two buffers per consumer: the loader need not wait at a tile's
    # start for the consumers to release the last tile's Q (d=64; FP8 at d<=128)
    O_BYTES: gl.constexpr = CONSUMERS * BLOCK_M * HEAD_D * o_desc.dtype.primitive_bitwidth // 8
    Q_BUFS: gl.constexpr = 1 + (O_APART & (QQKV_BYTES + O_BYTES <= 200 * 1024))
    q_smem = gl.allocate_shared_memory(dtype, [Q_BUFS * CONSUMERS] + q_desc.block_type.shape, q_desc.layout)
    if O_APART:
        o_smem = gl.allocate_shared_memory(o_desc.dtype, [CONSUMERS] + o_desc.block_type.shape, o_desc.layout)
    else:
        o_smem = q_smem
    q_bar = gl.allocate_shared_memory(gl.int64, [Q_BUFS * CONSUMERS, 1], mbarrier.MBarrierLayout())
    q_free = gl.allocate_shared_memory(gl.int64, [Q_BUFS * CONSUMERS, 1], mbarrier.MBarrierLayout())
    turn_bar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for c in gl.static_range(Q_BUFS * CONSUMERS):
        mbarrier.init(q_bar.index(c), count=1)
        mbarrier.init(q_free.index(c), count=1)
    for c in gl.static_range(2):
        mbarrier.init(turn_bar.index(c), count=1)
    for s in gl.static_range(STAGES):
        mbarrier.init(k_bar.index(s), count=1)
        mbarrier.init(v_bar.index(s), count=1)
        mbarrier.init(empty_bar.index(s), count=CONSUMERS)  # every consumer releases each buffer
    fence_async_shared()

    shared = (q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, o_smem, q_bar, q_free, k_bar, v_bar, empty_bar,
              turn_bar, lse_ptr, qs_ptr, ks_ptr, vs_ptr, sched_ptr, seqlen_q, seqlen_k, heads_q, band_hi, qk_scale,
              n_m_tiles, n_tiles, q_blocks, kv_blocks)  # fmt: skip
    # the partition lists must be literals: a variable holding the partition functions does not compile
    if CONSUMERS == 2:
        gl.warp_specialize(
            [
                (_consumer, (0, shared, GROUP, HAS_HI, PINGPONG, CONSUMERS, O_APART, SCHEDULE, OVERLAP, PERMUTE_V)),
                (_consumer, (1, shared, GROUP, HAS_HI, PINGPONG, CONSUMERS, O_APART, SCHEDULE, OVERLAP, PERMUTE_V)),
                (_loader, (shared, GROUP, HAS_HI, CONSUMERS, SCHEDULE)),
            ],
            [4, 1],
            [CONSUMER_REGS, 24],
        )
    elif CONSUMERS == 3:
        gl.warp_specialize(
            [
                (_consumer, (0, shared, GROUP, HAS_HI, PINGPONG, CONSUMERS, O_APART, SCHEDULE, OVERLAP, PERMUTE_V)),
                (_consumer, (1, shared, GROUP, HAS_HI, PINGPONG, CONSUMERS, O_APART, SCHEDULE, OVERLAP, PERMUTE_V)),
                (_consumer, (2, shared, GROUP, HAS_HI, PINGPONG, CONSUMERS, O_APART, SCHEDULE, OVERLAP, PERMUTE_V)),
                (_loader, (shared, GROUP, HAS_HI, CONSUMERS, SCHEDULE)),
            ],
            [4, 4, 1],
            [CONSUMER_REGS, CONSUMER_REGS, 24],
        )
    else:
        gl.warp_specialize(
            [
                (_consumer, (0, shared, GROUP, HAS_HI, PINGPONG, CONSUMERS, O_APART, SCHEDULE, OVERLAP, PERMUTE_V)),
                (_consumer, (1, shared, GROUP, HAS_HI, PINGPONG, CONSUMERS, O_APART, SCHEDULE, OVERLAP, PERMUTE_V)),
                (_consumer, (2, shared, GROUP, HAS_HI, PINGPONG, CONSUMERS, O_APART, SCHEDULE, OVERLAP, PERMUTE_V)),
                (_consumer, (3, shared, GROUP, HAS_HI, PINGPONG, CONSUMERS, O_APART, SCHEDULE, OVERLAP, PERMUTE_V)),
                (_loader, (shared, GROUP, HAS_HI, CONSUMERS, SCHEDULE)),
            ],
            [4, 4, 4, 1],
            [CONSUMER_REGS, CONSUMER_REGS, CONSUMER_REGS, 24],
        )
