"""The ``cuda_ampere`` kernels through CuPy (imports cupy; loaded on first use)."""

from __future__ import annotations

import torch

from portattn._call import AttentionCall
from portattn.backends import cupy_launch
from portattn.backends.cuda_ampere import plan


def forward(
    call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (batch, seqlen_q, heads_q, head_dim_v)``, ``lse`` float32 ``(batch, heads_q, seqlen_q)``."""
    return cupy_launch.forward(plan.source(), plan.NVRTC_OPTIONS, plan.fwd_launch, call, q, k, v)


def backward(
    call: AttentionCall,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashAttention-2 backward: the dK/dV kernel (over key blocks, summing each K/V head's query
    heads: no atomics, deterministic) and the dQ kernel."""
    return cupy_launch.backward(plan.source(), plan.NVRTC_OPTIONS, plan.bwd_launches, call, q, k, v, out, lse, dout)
