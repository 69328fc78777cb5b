"""Tiled online-softmax attention in plain torch: forward and recomputing backward.

Memory beyond inputs and outputs is O(seqlen): one ``(block_q, block_k)`` score tile per
(batch, head) at a time, never a ``seqlen_q x seqlen_k`` tensor. Tiles outside the causal/window
band are never visited; tiles a sparsity pattern hides entirely are skipped. GQA is served by
grouping query heads over their key/value head, without repeating K/V.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from portattn import _alloc

if TYPE_CHECKING:
    from portattn._call import AttentionCall


@dataclass
class _Grouped:
    """Inputs as float32 ``(batch, heads_kv, group, seqlen, dim)``; K/V have group 1."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor


def _grouped(call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> _Grouped:
    def split(x: torch.Tensor, group: int) -> torch.Tensor:
        return x.transpose(1, 2).unflatten(1, (call.heads_kv, group)).float()

    return _Grouped(split(q, call.group_size), split(k, 1), split(v, 1))


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
        pattern = call.sparsity.tile_mask(call.batch, call.heads_q, (qs, qe), (ks, ke), device)
        if pattern is not None:
            pattern = _to_grouped_heads(pattern, call)
            mask = pattern if mask is None else mask & pattern
    return mask


def _scores(
    call: AttentionCall, g: _Grouped, qs: int, qe: int, ks: int, ke: int
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Masked scores of one tile ``(batch, heads_kv, group, qe-qs, ke-ks)`` and, with softcap, the
    ``tanh`` the backward needs. None when every entry of the tile is masked."""
    mask = _tile_mask(call, qs, qe, ks, ke, g.q.device)
    if mask is not None and not bool(mask.any()):
        return None
    s = torch.matmul(g.q[..., qs:qe, :], g.k[..., ks:ke, :].transpose(-1, -2))
    s.mul_(call.scale)
    tanh = None
    if call.softcap is not None:
        tanh = torch.tanh(s / call.softcap)
        s = tanh * call.softcap
    if call.bias is not None:
        s += _to_grouped_heads(call.bias[:, :, qs:qe, ks:ke], call).float()
    if mask is not None:
        s.masked_fill_(~mask, float("-inf"))
    return s, tanh


def forward(
    call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_q: int, block_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (batch, seqlen_q, heads_q, head_dim_v)`` in q's dtype, ``lse`` float32 ``(batch, heads_q, seqlen_q)``."""
    g = _grouped(call, q, k, v)
    batch, heads_kv, group = call.batch, call.heads_kv, call.group_size
    out = _alloc.empty(call.batch, call.seqlen_q, call.heads_q, call.head_dim_v, dtype=q.dtype, device=q.device)
    out_grouped = out.view(batch, call.seqlen_q, heads_kv, group, call.head_dim_v)
    lse = _alloc.empty(batch, heads_kv, group, call.seqlen_q, dtype=torch.float32, device=q.device)
    for qs in range(0, call.seqlen_q, block_q):
        qe = min(call.seqlen_q, qs + block_q)
        row_max = torch.full((batch, heads_kv, group, qe - qs, 1), float("-inf"), device=q.device)
        row_sum = torch.zeros_like(row_max)
        acc = torch.zeros(batch, heads_kv, group, qe - qs, call.head_dim_v, device=q.device)
        k_lo, k_hi = key_range(call, qs, qe)
        for ks in range(k_lo, k_hi, block_k):
            ke = min(k_hi, ks + block_k)
            tile = _scores(call, g, qs, qe, ks, ke)
            if tile is None:
                continue
            s = tile[0]
            new_max = torch.maximum(row_max, s.amax(dim=-1, keepdim=True))
            safe_max = new_max.masked_fill(torch.isinf(new_max), 0.0)  # rows with nothing visible yet
            p = torch.exp(s - safe_max)
            rescale = torch.exp(row_max - safe_max)
            row_sum = row_sum * rescale + p.sum(dim=-1, keepdim=True)
            acc = acc * rescale + torch.matmul(p, g.v[..., ks:ke, :])
            row_max = new_max
        empty = row_sum == 0
        acc = acc / torch.where(empty, torch.ones_like(row_sum), row_sum)
        out_grouped[:, qs:qe] = acc.permute(0, 3, 1, 2, 4)
        tile_lse = row_max.masked_fill(empty, 0.0) + torch.log(row_sum.masked_fill(empty, 1.0))
        lse[..., qs:qe] = tile_lse.masked_fill(empty, float("-inf")).squeeze(-1)
    return out, lse.flatten(1, 2)


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashAttention-2 backward by recomputation from ``out`` and ``lse``; returns ``dq, dk, dv``."""
    g = _grouped(call, q, k, v)
    batch, heads_kv, group = call.batch, call.heads_kv, call.group_size

    def grouped_rows(x: torch.Tensor) -> torch.Tensor:  # (batch, heads_q, seqlen_q) -> (b, hkv, g, sq, 1)
        return x.float().unflatten(1, (heads_kv, group)).unsqueeze(-1)

    do = dout.transpose(1, 2).unflatten(1, (heads_kv, group)).float()
    delta = (dout.float() * out.float()).sum(-1).transpose(1, 2)  # (batch, heads_q, seqlen_q)
    if dlse is not None:
        delta = delta - dlse.float()
    delta = grouped_rows(delta)
    lse_g = grouped_rows(lse)
    lse_g = lse_g.masked_fill(torch.isinf(lse_g), 0.0)  # rows that see nothing: all scores are -inf

    dq = torch.zeros_like(g.q)
    dk = _alloc.empty(batch, call.seqlen_k, heads_kv, call.head_dim, dtype=k.dtype, device=k.device)
    dv = _alloc.empty(batch, call.seqlen_k, heads_kv, call.head_dim_v, dtype=v.dtype, device=v.device)
    for ks in range(0, call.seqlen_k, block_k):
        ke = min(call.seqlen_k, ks + block_k)
        dk_acc = torch.zeros(batch, heads_kv, group, ke - ks, call.head_dim, device=q.device)
        dv_acc = torch.zeros(batch, heads_kv, group, ke - ks, call.head_dim_v, device=q.device)
        q_lo, q_hi = query_range(call, ks, ke)
        for qs in range(q_lo, q_hi, block_q):
            qe = min(q_hi, qs + block_q)
            tile = _scores(call, g, qs, qe, ks, ke)
            if tile is None:
                continue
            s, tanh = tile
            p = torch.exp(s - lse_g[..., qs:qe, :])
            do_t = do[..., qs:qe, :]
            dv_acc += torch.matmul(p.transpose(-1, -2), do_t)
            dp = torch.matmul(do_t, g.v[..., ks:ke, :].transpose(-1, -2))
            ds = p * (dp - delta[..., qs:qe, :])
            if tanh is not None:
                ds = ds * (1 - tanh * tanh)
            ds.mul_(call.scale)
            dq[..., qs:qe, :] += torch.matmul(ds, g.k[..., ks:ke, :])
            dk_acc += torch.matmul(ds.transpose(-1, -2), g.q[..., qs:qe, :])
        dk[:, ks:ke] = dk_acc.sum(2).transpose(1, 2)
        dv[:, ks:ke] = dv_acc.sum(2).transpose(1, 2)
    dq_out = dq.flatten(1, 2).transpose(1, 2).to(q.dtype)
    return dq_out, dk, dv
