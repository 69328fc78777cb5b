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
