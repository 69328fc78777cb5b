"""Tiled online-softmax attention in plain torch: forward and recomputing backward.

Memory beyond inputs and outputs is O(seqlen): one ``(block_q, block_k)`` score tile per
(batch, head) at a time, never a ``seqlen_q x seqlen_k`` tensor. Tiles outside the causal/window
band are never visited; tiles a sparsity pattern hides entirely are skipped. GQA is served by
grouping query heads over their key/value head, without repeating K/V.

Layout: every matmul is a ``torch.bmm`` over ``batch * heads_kv`` with the ``group`` query heads of
one key/value head stacked along the rows, so a query block is ``(batch * heads_kv, group * rows, dim)``
and K/V tiles are ``(batch * heads_kv, keys, dim)`` (views of float32 inputs when ``batch == 1`` or
``heads_kv == 1``). Scores are kept in base 2 (the softmax scale times ``log2(e)`` is folded into the
query block, as FlashAttention does) because ``exp2`` is much cheaper than ``exp`` on CPUs; score
tiles are updated in place.

Optional second level (``inner_k``, used by the ``ascend`` backend's two-level tiling): each
``(block_q, block_k)`` tile keeps its online-softmax step, mask and skipping, but every matmul over its
keys is issued as consecutive matmuls over key sub-tiles of at most ``inner_k`` keys, the score
sub-tiles written into slices of the one score tile. ``inner_k=None`` issues one matmul per tile.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from portattn import _alloc

if TYPE_CHECKING:
    from portattn._call import AttentionCall

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)


def _to_grouped_heads(t: torch.Tensor, call: AttentionCall) -> torch.Tensor:
    """``(batch|1, heads_q|1, a, b)`` -> broadcastable ``(batch|1, heads_kv|1, group|1, a, b)``."""
    if t.shape[1] == 1:
        return t.unsqueeze(2)
    return t.unflatten(1, (call.heads_kv, call.group_size))


def key_range(call: AttentionCall, q_start: int, q_end: int) -> tuple[int, int]:
    """Keys that rows ``[q_start, q_end)`` can see under the band."""
    lo, hi = call.band
    start = 0 if lo is None else max(0, q_start + lo)
    end = call.seqlen_k if hi is None else min(call.seqlen_k, q_end - 1 + hi + 1)
    return start, max(start, end)


def query_range(call: AttentionCall, k_start: int, k_end: int) -> tuple[int, int]:
    """Queries that can see some key in ``[k_start, k_end)`` under the band."""
    lo, hi = call.band
    start = 0 if hi is None else max(0, k_start - hi)
    end = call.seqlen_q if lo is None else min(call.seqlen_q, k_end - 1 - lo + 1)
    return start, max(start, end)


def _tile_mask(call: AttentionCall, qs: int, qe: int, ks: int, ke: int, device: torch.device) -> torch.Tensor | None:
    """Boolean mask broadcastable to ``(batch, heads_kv, group, qe-qs, ke-ks)``, None if all visible."""
    mask = None
    lo, hi = call.band
    rel_min, rel_max = ks - (qe - 1), (ke - 1) - qs
    if (lo is not None and rel_min < lo) or (hi is not None and rel_max > hi):
        rel = torch.arange(ks, ke, device=device)[None, :] - torch.arange(qs, qe, device=device)[:, None]
        mask = torch.ones_like(rel, dtype=torch.bool)
        if lo is not None:
            mask &= rel >= lo
        if hi is not None:
            mask &= rel <= hi
    if call.sparsity is not None:
        pattern = call.sparsity.tile_mask(
            call.batch, call.heads_q, call.seqlen_q, call.seqlen_k, (qs, qe), (ks, ke), device
        )
        if pattern is not None:
            pattern = _to_grouped_heads(pattern, call)
            mask = pattern if mask is None else mask & pattern
    return mask


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    """``(batch, seqlen, heads, dim)`` -> float32 ``(batch, heads, seqlen, dim)``: a view of float32 input,
    else one contiguous float32 copy."""
    x = x.transpose(1, 2)
    if x.dtype != torch.float32:
        x = x.to(torch.float32, memory_format=torch.contiguous_format)
    return x


def _kv_tile(x: torch.Tensor, ks: int, ke: int) -> torch.Tensor:
    """Keys ``[ks, ke)`` of a ``(batch, heads_kv, seqlen, dim)`` tensor as ``(batch * heads_kv, ke-ks, dim)``."""
    return x[:, :, ks:ke].reshape(x.shape[0] * x.shape[1], ke - ks, x.shape[-1])


def _rows(x: torch.Tensor, qs: int, qe: int, factor: float | None) -> torch.Tensor:
    """Rows ``[qs, qe)`` of a ``(batch, seqlen, heads_q, dim)`` tensor as a new contiguous float32
    ``(batch, heads_q, qe-qs, dim)`` (viewable as ``(batch * heads_kv, group * (qe-qs), dim)``), times ``factor``."""
    src = x[:, qs:qe].transpose(1, 2)
    buf = torch.empty(src.shape, dtype=torch.float32, device=x.device)
    if factor is None:
        return buf.copy_(src)
    if src.dtype == torch.float32:
        return torch.mul(src, factor, out=buf)
    return buf.copy_(src).mul_(factor)


def _finish_scores(
    call: AttentionCall,
    s: torch.Tensor,
    qs: int,
    qe: int,
    ks: int,
    ke: int,
    mask: torch.Tensor | None,
    keep_tanh: bool,
) -> torch.Tensor | None:
    """In place on ``s = (q * q_factor(call)) @ k^T`` of one tile: softcap, bias, mask; base-2 scores.
    Returns the softcap's ``tanh`` (a copy) when ``keep_tanh``."""
    tanh = None
    if call.softcap is not None:
        s.div_(call.softcap).tanh_()
        if keep_tanh:
            tanh = s.clone()
        s.mul_(call.softcap * LOG2E)
    if call.bias is None and mask is None:
        return tanh
    s5 = s.view(call.batch, call.heads_kv, call.group_size, qe - qs, ke - ks)
    if call.bias is not None:
        s5.add_(_to_grouped_heads(call.bias[:, :, qs:qe, ks:ke], call), alpha=LOG2E)
    if mask is not None:
        s5.masked_fill_(~mask, float("-inf"))
    return tanh


def _key_slices(keys: int, inner_k: int | None) -> list[tuple[int, int]] | None:
    """Sub-tiles ``[a, b)`` of at most ``inner_k`` keys, None when one matmul covers the tile."""
    if inner_k is None or keys <= inner_k:
        return None
    return [(a, min(keys, a + inner_k)) for a in range(0, keys, inner_k)]


def _mm_nt(a: torch.Tensor, b: torch.Tensor, inner_k: int | None) -> torch.Tensor:
    """``a @ b^T`` for ``b = (batch, keys, dim)``: keys are the result's columns, one slice per sub-tile."""
    parts = _key_slices(b.shape[1], inner_k)
    if parts is None:
        return torch.bmm(a, b.transpose(1, 2))
    return torch.cat([torch.bmm(a, b[:, i:j].transpose(1, 2)) for i, j in parts], dim=2)


def _mm_nn(a: torch.Tensor, b: torch.Tensor, inner_k: int | None, acc: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` for ``a = (batch, rows, keys)``, ``b = (batch, keys, dim)``: keys are the contraction,
    summed sub-tile by sub-tile; added into ``acc`` in place when given."""
    parts = _key_slices(b.shape[1], inner_k)
    if parts is None:
        return torch.bmm(a, b) if acc is None else acc.baddbmm_(a, b)
    for i, j in parts:
        if acc is None:
            acc = torch.bmm(a[:, :, i:j], b[:, i:j])
        else:
            acc.baddbmm_(a[:, :, i:j], b[:, i:j])
    return acc


def _acc_tn(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, inner_k: int | None, alpha: float = 1.0) -> None:
    """``acc += alpha * a^T @ b`` for ``a = (batch, rows, keys)``: keys are ``acc``'s rows, one slice per sub-tile."""
    parts = _key_slices(a.shape[2], inner_k)
    if parts is None:
        acc.baddbmm_(a.transpose(1, 2), b, alpha=alpha)
        return
    for i, j in parts:
        acc[:, i:j].baddbmm_(a[:, :, i:j].transpose(1, 2), b, alpha=alpha)


def q_factor(call: AttentionCall) -> float:
    """What the query block is multiplied by: the scale, and ``log2(e)`` unless softcap applies it later."""
    return call.scale if call.softcap is not None else call.scale * LOG2E


def _grouped_rows(x: torch.Tensor, call: AttentionCall, qs: int, qe: int) -> torch.Tensor:
    """``(batch, heads_q, seqlen_q)`` rows ``[qs, qe)`` -> ``(batch * heads_kv, group * (qe-qs), 1)``."""
    return x[:, :, qs:qe].reshape(call.batch * call.heads_kv, call.group_size * (qe - qs), 1)


def forward(
    call: AttentionCall,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_q: int,
    block_k: int,
    *,
    inner_k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (batch, seqlen_q, heads_q, head_dim_v)`` in q's dtype, ``lse`` float32 ``(batch, heads_q, seqlen_q)``.

    ``inner_k``: split each tile's matmuls into key sub-tiles of at most this many keys (None: don't)."""
    batch, heads_q, seqlen_q, dim_v = call.batch, call.heads_q, call.seqlen_q, call.head_dim_v
    device = q.device
    kh, vh = _heads_first(k), _heads_first(v)
    out, lse = _alloc.attention_outputs(call, q.dtype, device)
    factor = q_factor(call)
    neg_inf = float("-inf")
    for qs in range(0, seqlen_q, block_q):
        qe = min(seqlen_q, qs + block_q)
        k_lo, k_hi = key_range(call, qs, qe)
        qb = None
        acc = row_max = row_sum = None
        for ks in range(k_lo, k_hi, block_k):
            ke = min(k_hi, ks + block_k)
            mask = _tile_mask(call, qs, qe, ks, ke, device)
            if mask is not None and not bool(mask.any()):
                continue
            if qb is None:
                qb = _rows(q, qs, qe, factor).view(batch * call.heads_kv, call.group_size * (qe - qs), call.head_dim)
            s = _mm_nt(qb, _kv_tile(kh, ks, ke), inner_k)  # (batch*heads_kv, group*rows, keys)
            _finish_scores(call, s, qs, qe, ks, ke, mask, keep_tanh=False)
            tile_max = s.amax(dim=-1, keepdim=True)
            new_max = tile_max if row_max is None else torch.maximum(row_max, tile_max)
            # only a masked or biased tile can leave a row at -inf (nothing visible yet): subtract 0 there
            safe_max = new_max if mask is None and call.bias is None else new_max.nan_to_num(neginf=0.0)
            p = s.sub_(safe_max).exp2_()
            vt = _kv_tile(vh, ks, ke)
            if acc is None:
                row_sum = p.sum(dim=-1, keepdim=True)
                acc = _mm_nn(p, vt, inner_k)
            else:
                rescale = torch.sub(row_max, safe_max).exp2_()  # 0 where row_max is -inf
                row_sum.mul_(rescale).add_(p.sum(dim=-1, keepdim=True))
                _mm_nn(p, vt, inner_k, acc.mul_(rescale))
            row_max = new_max
        out_rows = out[:, qs:qe].transpose(1, 2)  # (batch, heads_q, rows, dim_v) view
        if acc is None:  # no key visible to any row of this block
            out_rows.zero_()
            lse[:, :, qs:qe] = neg_inf
            continue
        # a row that saw something has row_sum >= 1 (its max contributes exp2(0) = 1); an empty row has
        # row_sum 0, acc 0 and row_max -inf: clamping gives out 0 and lse -inf, no NaN
        row_sum.clamp_(min=1.0)
        out_rows.copy_(acc.div_(row_sum).view(batch, heads_q, qe - qs, dim_v))
        lse[:, :, qs:qe] = row_max.add_(row_sum.log2_()).mul_(LN2).view(batch, heads_q, qe - qs)
    return out, lse


def backward(
    call: AttentionCall,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
    dlse: torch.Tensor | None,
    block_q: int,
    block_k: int,
    *,
    inner_k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashAttention-2 backward by recomputation from ``out`` and ``lse``; returns ``dq, dk, dv``.

    ``inner_k``: split each tile's matmuls into key sub-tiles of at most this many keys (None: don't)."""
    batch, heads_q, heads_kv, seqlen_q = call.batch, call.heads_q, call.heads_kv, call.seqlen_q
    group, dim, dim_v = call.group_size, call.head_dim, call.head_dim_v
    device = q.device
    kh, vh = _heads_first(k), _heads_first(v)
    factor = q_factor(call)

    # per row: lse in base 2 (0 where -inf: all scores of such a row are -inf, so p = 0), and
    # delta = rowsum(dout * out) - dlse, both (batch, heads_q, seqlen_q), computed block by block
    lse2 = lse.float().mul(LOG2E).nan_to_num_(neginf=0.0)
    delta = torch.empty(batch, heads_q, seqlen_q, dtype=torch.float32, device=device)
    for qs in range(0, seqlen_q, block_q):
        qe = min(seqlen_q, qs + block_q)
        dot = (dout[:, qs:qe].float() * out[:, qs:qe].float()).sum(-1)
        delta[:, :, qs:qe] = dot.transpose(1, 2)
    if dlse is not None:
        delta.sub_(dlse.float())

    blocks = [(qs, min(seqlen_q, qs + block_q)) for qs in range(0, seqlen_q, block_q)]
    # dq accumulates in float32 in the output layout (the returned tensor itself for float32 inputs)
    dq = torch.zeros(batch, seqlen_q, heads_q, dim, dtype=torch.float32, device=device)
    dk = _alloc.empty(batch, call.seqlen_k, heads_kv, dim, dtype=k.dtype, device=k.device)
    dv = _alloc.empty(batch, call.seqlen_k, heads_kv, dim_v, dtype=v.dtype, device=v.device)
    dk_alpha = call.scale / factor  # qb carries factor; dk needs scale
    for ks in range(0, call.seqlen_k, block_k):
        ke = min(call.seqlen_k, ks + block_k)
        kt, vt = _kv_tile(kh, ks, ke), _kv_tile(vh, ks, ke)
        dk_acc = torch.zeros(batch * heads_kv, ke - ks, dim, device=device)
        dv_acc = torch.zeros(batch * heads_kv, ke - ks, dim_v, device=device)
        q_lo, q_hi = query_range(call, ks, ke)
        for qs, qe in blocks:
            if qe <= q_lo or qs >= q_hi:
                continue
            mask = _tile_mask(call, qs, qe, ks, ke, device)
            if mask is not None and not bool(mask.any()):
                continue
            rows = group * (qe - qs)
            qb = _rows(q, qs, qe, factor).view(batch * heads_kv, rows, dim)
            dob = _rows(dout, qs, qe, None).view(batch * heads_kv, rows, dim_v)
            s = _mm_nt(qb, kt, inner_k)
            tanh = _finish_scores(call, s, qs, qe, ks, ke, mask, keep_tanh=True)
            p = s.sub_(_grouped_rows(lse2, call, qs, qe)).exp2_()
            _acc_tn(dv_acc, p, dob, inner_k)  # sums over the group's query heads too
            ds = _mm_nt(dob, vt, inner_k).sub_(_grouped_rows(delta, call, qs, qe)).mul_(p)
            if tanh is not None:
                ds.mul_(tanh.square_().neg_().add_(1.0))
            dq_tile = _mm_nn(ds, kt, inner_k).view(batch, heads_q, qe - qs, dim).transpose(1, 2)
            dq[:, qs:qe].add_(dq_tile, alpha=call.scale)
            _acc_tn(dk_acc, ds, qb, inner_k, alpha=dk_alpha)
        dk[:, ks:ke] = dk_acc.view(batch, heads_kv, ke - ks, dim).transpose(1, 2)
        dv[:, ks:ke] = dv_acc.view(batch, heads_kv, ke - ks, dim_v).transpose(1, 2)
    return dq.to(q.dtype), dk, dv
