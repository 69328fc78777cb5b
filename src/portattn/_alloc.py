"""Output allocation that can poison: with poisoning on, new outputs are NaN until a kernel writes them,
so a kernel that skips an element cannot pass a test by reading stale or zeroed memory. Also the
layout test the GPU kernels share: rows they can move in 16-byte pieces."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from portattn._call import AttentionCall

poison = os.environ.get("PORTATTN_POISON", "") not in ("", "0")


def empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty``, or a NaN-filled tensor while poisoning is on."""
    if poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def attention_outputs(
    call: AttentionCall, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A forward's ``out (batch, seqlen_q, heads_q, head_dim_v)`` in ``dtype`` and ``lse`` float32
    ``(batch, heads_q, seqlen_q)``, from ``empty``."""
    out = empty(call.batch, call.seqlen_q, call.heads_q, call.head_dim_v, dtype=dtype, device=device)
    return out, empty(call.batch, call.heads_q, call.seqlen_q, dtype=torch.float32, device=device)


def rows_16b_aligned(t: torch.Tensor) -> bool:
    """The last dim contiguous, and the base and every other stride 16-byte aligned: what TMA
    descriptors and ``cp.async`` 16-byte copies can read in place."""
    size = t.element_size()
    return t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all((s * size) % 16 == 0 for s in t.stride()[:-1])
