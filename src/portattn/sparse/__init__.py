"""Sparsity patterns (SPEC §3).

The semantics of every pattern is a dense boolean mask ``allowed[b, h, i, j]`` (True = query ``i``
may see key ``j``), ANDed with ``causal``/``window``. The reference materializes it; kernels ask for
one tile at a time (``tile_mask``) and skip tiles that are fully masked. Static block patterns
(``blocks.py``) also say per tile whether it is empty, full or partial, and list what to visit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from portattn.sparse.base import DenseMask, SparsityPattern
from portattn.sparse.blocks import (
    BigBird,
    BlockLists,
    BlockMask,
    BlockPattern,
    GlobalTokens,
    RandomBlocks,
    SlidingWindow,
)
from portattn.sparse.dynamic import DynamicPattern, HashBuckets, IntervalMask, QKDrop

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "BlockLists",
    "BlockPattern",
    "DenseMask",
    "DynamicPattern",
    "HashBuckets",
    "IntervalMask",
    "QKDrop",
    "SparsityPattern",
    "bigbird",
    "block_mask",
    "dense_mask",
    "global_tokens",
    "hash_buckets",
    "qk_drop",
    "random_blocks",
    "sliding_window",
]


def dense_mask(mask: torch.Tensor) -> DenseMask:
    """Pattern from a boolean mask, True = allowed: ``(seqlen_q, seqlen_k)`` or 4-D broadcastable."""
    return DenseMask(mask)


def sliding_window(left: int, right: int, *, block: int = 128) -> SlidingWindow:
    """Query ``i`` sees keys ``i + off - left .. i + off + right`` (``off = seqlen_k - seqlen_q``, as the
    call's ``window``; ``-1``: unbounded on that side)."""
    return SlidingWindow(left, right, block)


def global_tokens(tokens: int | list[int] | torch.Tensor, *, block: int = 128) -> GlobalTokens:
    """``tokens`` (a count ``n``: positions ``0..n-1``; or indices) attend to all and are attended by all."""
    return GlobalTokens(tokens, block)


def random_blocks(per_row: int, seed: int = 0, *, block: int = 128) -> RandomBlocks:
    """Each query block sees ``per_row`` random key blocks, reproducible from ``seed``."""
    return RandomBlocks(per_row, seed, block)


def bigbird(window: int, n_global: int, random_per_row: int, seed: int = 0, *, block: int = 128) -> BigBird:
    """BigBird: ``sliding_window(window, window) | global_tokens(n_global) | random_blocks(random_per_row)``."""
    return BigBird(window, n_global, random_per_row, seed, block)


def block_mask(fn: Callable, seqlen_q: int, seqlen_k: int, block: int = 128) -> BlockMask:
    """A pattern from a predicate ``fn(b, h, i, j) -> bool`` evaluated on broadcastable index tensors
    (FlexAttention's ``mask_mod`` convention), for calls of these lengths."""
    return BlockMask(fn, seqlen_q, seqlen_k, block)


def qk_drop(q_keep: torch.Tensor, k_keep: torch.Tensor) -> QKDrop:
    """Key/query dropping: ``q_keep`` bool ``(batch, seqlen_q, heads_q|1)``, ``k_keep`` bool ``(batch,
    seqlen_k, heads_kv|1)``. Dropped keys are invisible and dropped queries output 0 (lse -inf);
    causal/window apply to the original positions. Runs by compacting the kept rows."""
    return QKDrop(q_keep, k_keep)


def hash_buckets(q_buckets: torch.Tensor, k_buckets: torch.Tensor) -> HashBuckets:
    """Hash-bucket attention: integer ids ``(batch, seqlen_q, heads_q|1)`` and ``(batch, seqlen_k,
    heads_kv|1)``; query ``i`` sees key ``j`` only if their buckets are equal (and causal/window allow
    it, on the original positions). Runs by ordering rows by bucket, stably."""
    return HashBuckets(q_buckets, k_buckets)
