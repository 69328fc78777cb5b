"""The shared reference: dense attention in float64, every semantic of SPEC §1 spelled out.

Slow and O(seqlen_q * seqlen_k) in memory on purpose: it is the oracle every backend is judged by.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from portattn._call import AttentionCall


def band_mask(seqlen_q: int, seqlen_k: int, band: tuple[int | None, int | None], device: torch.device) -> torch.Tensor:
    """Boolean ``(seqlen_q, seqlen_k)``: True where ``lo <= j - i <= hi``."""
    rel = torch.arange(seqlen_k, device=device)[None, :] - torch.arange(seqlen_q, device=device)[:, None]
    allowed = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    lo, hi = band
    if lo is not None:
        allowed &= rel >= lo
    if hi is not None:
        allowed &= rel <= hi
    return allowed


def allowed_mask(call: AttentionCall, device: torch.device) -> torch.Tensor:
    """Boolean ``(batch|1, heads_q|1, seqlen_q, seqlen_k)``: band AND sparsity pattern."""
    allowed = band_mask(call.seqlen_q, call.seqlen_k, call.band, device)[None, None]
    if call.sparsity is not None:
        pattern = call.sparsity.allowed_mask(call.batch, call.heads_q, call.seqlen_q, call.seqlen_k, device)
        allowed = allowed & pattern
    return allowed


def attention_reference(
    call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention in float64, differentiable by autograd.

    Args:
        q: ``(batch, seqlen_q, heads_q, head_dim)``; k: ``(batch, seqlen_k, heads_kv, head_dim)``;
            v: ``(batch, seqlen_k, heads_kv, head_dim_v)``; any dtype, upcast to float64.
    Returns:
        ``out`` float64 ``(batch, seqlen_q, heads_q, head_dim_v)`` and ``lse`` float64
        ``(batch, heads_q, seqlen_q)``; a row that sees no key has out 0 and lse -inf.
    """
    device = q.device
    q64 = q.to(torch.float64).transpose(1, 2)
    k64 = k.to(device=device, dtype=torch.float64).transpose(1, 2).repeat_interleave(call.group_size, dim=1)
    v64 = v.to(device=device, dtype=torch.float64).transpose(1, 2).repeat_interleave(call.group_size, dim=1)
    scores = (q64 @ k64.transpose(-1, -2)) * call.scale
    if call.softcap is not None:
        scores = call.softcap * torch.tanh(scores / call.softcap)
    if call.bias is not None:
        scores = scores + call.bias.to(torch.float64)
    scores = scores.masked_fill(~allowed_mask(call, device), float("-inf"))
    if call.seqlen_k == 0:  # amax of an empty row is an error, not -inf
        row_max = scores.new_full((*scores.shape[:-1], 1), float("-inf"))
    else:
        row_max = scores.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
    exp = torch.exp(scores - row_max)
    denom = exp.sum(dim=-1, keepdim=True)
    empty = denom == 0
    probs = exp / torch.where(empty, torch.ones_like(denom), denom)
    out = (probs @ v64).transpose(1, 2)
    lse = row_max + torch.log(torch.where(empty, torch.ones_like(denom), denom))
    lse = torch.where(empty, torch.full_like(lse, float("-inf")), lse).squeeze(-1)
    return out, lse
