"""Output allocation that can poison: with poisoning on, new outputs are NaN until a kernel writes them,
so a kernel that skips an element cannot pass a test by reading stale or zeroed memory."""

from __future__ import annotations

import os

import torch

poison = os.environ.get("PORTATTN_POISON", "") not in ("", "0")


def empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty``, or a NaN-filled tensor while poisoning is on."""
    if poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
