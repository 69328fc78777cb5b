"""Compiling and launching the ``cuda_volta`` kernel (imports cupy; loaded on first use)."""

from __future__ import annotations

import torch

from portattn import _alloc
from portattn._call import AttentionCall
from portattn.backends import cupy_launch
from portattn.backends.cuda_source import rows_aligned
from portattn.backends.cuda_volta import plan


def forward(
    call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (batch, seqlen_q, heads_q, head_dim)``, ``lse`` float32 ``(batch, heads_q, seqlen_q)``."""
    q, k, v = (rows_aligned(t) for t in (q, k, v))
    out = _alloc.empty(call.batch, call.seqlen_q, call.heads_q, call.head_dim_v, dtype=q.dtype, device=q.device)
    lse = _alloc.empty(call.batch, call.heads_q, call.seqlen_q, dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    cupy_launch.run(plan.source(), plan.NVRTC_OPTIONS, plan.fwd_launch(call, q, k, v, out, lse), device=q.device)
    return out, lse


def backward(
    call: AttentionCall,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """delta = rowsum(dout * out) in torch, then the dK/dV kernel (no atomics: deterministic) and the
    dQ kernel."""
    q, k, v, dout = (rows_aligned(t) for t in (q, k, v, dout))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = (dout.float() * out.float()).sum(-1).transpose(1, 2).contiguous()  # (batch, heads_q, seqlen_q)
    launches = plan.bwd_launches(call, q, k, v, dout, lse.contiguous(), delta, dq, dk, dv)
    cupy_launch.run(plan.source(), plan.NVRTC_OPTIONS, *launches, device=q.device)
    return dq, dk, dv
