"""The benchmarks' shared shape grid: 16k tokens per batch, hidden 2048 (the FlashAttention papers')."""

from __future__ import annotations

import argparse

import torch


def parser(seqlen: int = 1024) -> argparse.ArgumentParser:
    """``--seqlen``, ``--head-dim`` and ``--causal``; a script adds its own options."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlen", type=int, default=seqlen)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--causal", action="store_true")
    return ap


def inputs(
    seqlen: int, head_dim: int, dtype: torch.dtype = torch.bfloat16
) -> tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(batch, heads, q, k, v)``: ``(batch, seqlen, heads, head_dim)`` on the GPU at the grid's size."""
    b, h = max(1, 16384 // seqlen), 2048 // head_dim
    q, k, v = (torch.randn(b, seqlen, h, head_dim, device="cuda", dtype=dtype) for _ in range(3))
    return b, h, q, k, v
