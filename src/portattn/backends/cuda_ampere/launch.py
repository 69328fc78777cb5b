"""Compiling and launching the ``cuda_ampere`` kernels (imports cupy; loaded on first use)."""

from __future__ import annotations

import torch

from portattn import _alloc
from portattn._call import AttentionCall
from portattn.backends import cupy_launch
from portattn.backends.cuda_ampere import plan


def forward(
    call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (batch, seqlen_q, heads_q, head_dim_v)``, ``lse`` float32 ``(batch, heads_q, seqlen_q)``."""
    q, k, v = (plan.rows_aligned(t) for t in (q, k, v))
    b, sq, hq = call.batch, call.seqlen_q, call.heads_q
    out = _alloc.empty(b, sq, hq, call.head_dim_v, dtype=q.dtype, device=q.device)
    lse = _alloc.empty(b, hq, sq, dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    _run(plan.fwd_launch(call, q, k, v, out, lse), device=q.device)
    return out, lse


def _run(*launches: plan.Launch, device: torch.device) -> None:
    cupy_launch.run(plan.source(), plan.NVRTC_OPTIONS, *launches, device=device)


def backward(
    call: AttentionCall,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashAttention-2 backward: delta = rowsum(dout * out) in torch, then the dK/dV kernel (over key
    blocks, summing each K/V head's query heads: no atomics, deterministic) and the dQ kernel."""
    q, k, v, dout = (plan.rows_aligned(t) for t in (q, k, v, dout))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = (dout.float() * out.float()).sum(-1).transpose(1, 2).contiguous()  # (batch, heads_q, seqlen_q)
    dkdv, dq_launch = plan.bwd_launches(call, q, k, v, dout, lse.contiguous(), delta, dq, dk, dv)
    _run(dkdv, dq_launch, device=q.device)
    return dq, dk, dv
