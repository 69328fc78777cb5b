"""Static block-sparse patterns (SPEC §3): sliding window, global tokens, random blocks, BigBird, a
mask from a predicate, and their ``|`` / ``&``.

Each pattern defines the element mask ``allowed[i, j]`` (the semantics every backend must match) and
its block states on a grid of ``block x block`` tiles: EMPTY (nothing allowed: a kernel skips the
tile), FULL (everything allowed: no mask arithmetic) or PARTIAL (the kernel applies the element
mask). States are exact for the built-in patterns and computed from block counts, never from a
``seqlen x seqlen`` tensor, so a pattern for 128k tokens builds in milliseconds. ``block_lists``
turns the states into what kernels walk: per query block, the visible key blocks and which of them
are full; and the transposed lists for the backward.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from portattn.sparse.base import SparsityPattern

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

EMPTY, PARTIAL, FULL = 0, 1, 2
_CACHE = 16  # block states kept per pattern (one per (seqlen_q, seqlen_k))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _is_int(x: object, minimum: int | None = None) -> bool:
    """A plain int (not a bool), at least ``minimum``."""
    return not isinstance(x, bool) and isinstance(x, int) and (minimum is None or x >= minimum)


@dataclass(frozen=True)
class BlockLists:
    """What a kernel walks, for one ``(seqlen_q, seqlen_k)``. For query block ``m``:
    ``kv_index[m, :kv_count[m]]`` are its visible key blocks in increasing order and ``kv_full[m, t]``
    whether block ``kv_index[m, t]`` is full. ``q_count``, ``q_index``, ``q_full``: the same per key
    block (the backward's dK/dV walk). Padding entries are -1 / False."""

    block: int
    kv_count: torch.Tensor  # int32 (n_q_blocks,)
    kv_index: torch.Tensor  # int32 (n_q_blocks, max visible)
    kv_full: torch.Tensor  # bool (n_q_blocks, max visible)
    q_count: torch.Tensor
    q_index: torch.Tensor
    q_full: torch.Tensor

    @staticmethod
    def from_states(states: torch.Tensor, block: int) -> BlockLists:
        def lists(s: torch.Tensor):
            visible = s != EMPTY
            count = visible.sum(1).to(torch.int32)
            width = max(int(count.max()) if count.numel() else 0, 1)
            # stable sort puts the visible blocks first, in increasing order
            order = torch.sort((~visible).to(torch.int8), dim=1, stable=True).indices[:, :width]
            taken = torch.arange(width)[None, :] < count[:, None]
            index = torch.where(taken, order, -1).to(torch.int32)
            full = torch.where(taken, torch.gather(s, 1, order) == FULL, False)
            return count, index, full

        kv = lists(states)
        q = lists(states.t())
        return BlockLists(block, *kv, *q)


class BlockPattern(SparsityPattern):
    """A static pattern with block states on ``block``-sized tiles; the same for every batch and head
    unless ``per_head`` (a ``block_mask`` whose predicate reads them)."""

    per_head = False

    def __init__(self, block: int) -> None:
        if not _is_int(block, 16) or block & (block - 1):
            raise ValueError(f"block must be a power of two >= 16, got {block!r}")
        self.block = block
        self._states = functools.lru_cache(maxsize=_CACHE)(self._compute_states)

    # subclasses: the element mask and (exact) block states
    def element_mask(self, rows: torch.Tensor, cols: torch.Tensor, seqlen_q: int, seqlen_k: int) -> torch.Tensor:
        """Boolean ``(len(rows), len(cols))``: whether query ``rows[a]`` may see key ``cols[b]``."""
        raise NotImplementedError

    def _compute_states(self, seqlen_q: int, seqlen_k: int) -> torch.Tensor:
        raise NotImplementedError

    @property
    def params(self) -> tuple:
        """The pattern's parameters (with its kind: the dispatch cache key)."""
        raise NotImplementedError

    @property
    def cache_key(self) -> Hashable:
        return (self.kind, *self.params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockPattern) and self.cache_key == other.cache_key

    def __hash__(self) -> int:
        return hash(self.cache_key)

    def __repr__(self) -> str:
        return f"{self.kind}{self.params}"

    def block_states(self, seqlen_q: int, seqlen_k: int) -> torch.Tensor:
        """int8 ``(cdiv(seqlen_q, block), cdiv(seqlen_k, block))``: EMPTY, PARTIAL or FULL (cached)."""
        return self._states(seqlen_q, seqlen_k)

    def block_lists(self, seqlen_q: int, seqlen_k: int) -> BlockLists:
        return BlockLists.from_states(self.block_states(seqlen_q, seqlen_k), self.block)

    def density(self, seqlen_q: int, seqlen_k: int) -> float:
        """The share of tiles a kernel visits."""
        states = self.block_states(seqlen_q, seqlen_k)
        return float((states != EMPTY).float().mean()) if states.numel() else 0.0

    def allowed_mask(self, batch: int, heads: int, seqlen_q: int, seqlen_k: int, device: torch.device) -> torch.Tensor:
        rows, cols = torch.arange(seqlen_q, device=device), torch.arange(seqlen_k, device=device)
        return _as_4d(self.element_mask(rows, cols, seqlen_q, seqlen_k))

    def tile_mask(self, batch, heads, seqlen_q, seqlen_k, q_range, k_range, device):
        """``(batch|1, heads|1, q_end-q_start, k_end-k_start)``, or None when the tile is wholly allowed."""
        rows = torch.arange(*q_range, device=device)
        cols = torch.arange(*k_range, device=device)
        mask = self.element_mask(rows, cols, seqlen_q, seqlen_k)
        if bool(mask.all()):
            return None
        return _as_4d(mask)

    def __or__(self, other: BlockPattern) -> BlockPattern:
        return Combined("union", self, other)

    def __and__(self, other: BlockPattern) -> BlockPattern:
        return Combined("intersection", self, other)


def _as_4d(mask: torch.Tensor) -> torch.Tensor:
    """An element mask, ``(rows, cols)`` or already ``(batch, heads, rows, cols)``, as 4-D."""
    return mask if mask.dim() == 4 else mask[None, None]


def _ranges(n: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last (inclusive) index of each block of a length-``n`` sequence."""
    first = torch.arange(0, n, block)
    return first, torch.clamp(first + block, max=n) - 1


class SlidingWindow(BlockPattern):
    """Query ``i`` sees key ``j`` iff ``-left <= j - i - (seqlen_k - seqlen_q) <= right`` (bottom-right
    aligned, as the call's ``window``); ``-1`` leaves that side unbounded."""

    kind = "sliding_window"

    def __init__(self, left: int, right: int, block: int = 128) -> None:
        for name, x in (("left", left), ("right", right)):
            if not _is_int(x, -1):
                raise ValueError(f"sliding_window {name} must be an int >= -1, got {x!r}")
        super().__init__(block)
        self.left, self.right = left, right

    @property
    def params(self) -> tuple:
        return (self.left, self.right, self.block)

    def element_mask(self, rows, cols, seqlen_q, seqlen_k):
        rel = cols[None, :] - rows[:, None] - (seqlen_k - seqlen_q)
        ok = torch.ones_like(rel, dtype=torch.bool)
        if self.left != -1:
            ok &= rel >= -self.left
        if self.right != -1:
            ok &= rel <= self.right
        return ok

    def _compute_states(self, seqlen_q, seqlen_k):
        q0, q1 = _ranges(seqlen_q, self.block)
        k0, k1 = _ranges(seqlen_k, self.block)
        off = seqlen_k - seqlen_q
        rel_min = k0[None, :] - q1[:, None] - off  # the smallest j - i - off in the tile
        rel_max = k1[None, :] - q0[:, None] - off
        lo = -self.left if self.left != -1 else None
        hi = self.right if self.right != -1 else None
        empty = torch.zeros_like(rel_min, dtype=torch.bool)
        full = torch.ones_like(rel_min, dtype=torch.bool)
        if lo is not None:
            empty |= rel_max < lo
            full &= rel_min >= lo
        if hi is not None:
            empty |= rel_min > hi
            full &= rel_max <= hi
        return _states_of(empty, full)


def _states_of(empty: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    states = torch.full(empty.shape, PARTIAL, dtype=torch.int8)
    states[full] = FULL
    states[empty] = EMPTY
    return states


class GlobalTokens(BlockPattern):
    """Global tokens attend to every key and every query attends to them: query ``i`` sees key ``j``
    iff ``i`` or ``j`` is one of ``indices`` (positions in each sequence)."""

    kind = "global_tokens"

    def __init__(self, tokens: int | list[int] | tuple[int, ...] | torch.Tensor, block: int = 128) -> None:
        if isinstance(tokens, bool):
            raise TypeError("global_tokens takes a count or a list of indices, got a bool")
        if isinstance(tokens, int):
            if tokens < 0:
                raise ValueError(f"global_tokens count must be >= 0, got {tokens}")
            indices = tuple(range(tokens))
        else:
            values = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
            if not all(_is_int(x, 0) for x in values):
                raise ValueError(f"global_tokens indices must be ints >= 0, got {values[:8]!r}")
            indices = tuple(sorted(set(values)))
        super().__init__(block)
        self.indices = indices

    @property
    def params(self) -> tuple:
        return (self.indices, self.block)

    def _member(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.isin(idx, torch.tensor(self.indices, dtype=idx.dtype, device=idx.device))

    def element_mask(self, rows, cols, seqlen_q, seqlen_k):
        return self._member(rows)[:, None] | self._member(cols)[None, :]

    def _counts(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per block of a length-``n`` sequence: how many of its positions are global, and its size."""
        nb = _cdiv(n, self.block)
        g = torch.tensor([i for i in self.indices if i < n], dtype=torch.long)
        count = torch.bincount(g // self.block, minlength=nb)[:nb]
        size = torch.clamp(n - torch.arange(nb) * self.block, max=self.block)
        return count, size

    def _compute_states(self, seqlen_q, seqlen_k):
        qc, qs = self._counts(seqlen_q)
        kc, ks = self._counts(seqlen_k)
        full = (qc == qs)[:, None] | (kc == ks)[None, :]
        empty = (qc == 0)[:, None] & (kc == 0)[None, :]
        return _states_of(empty, full)


class RandomBlocks(BlockPattern):
    """Each query block sees ``per_row`` key blocks drawn without replacement (BigBird's random
    attention), reproducibly from ``seed``, the lengths and the block size."""

    kind = "random_blocks"

    def __init__(self, per_row: int, seed: int = 0, block: int = 128) -> None:
        if not _is_int(per_row, 0):
            raise ValueError(f"random_blocks per_row must be an int >= 0, got {per_row!r}")
        if not _is_int(seed):
            raise ValueError(f"random_blocks seed must be an int, got {seed!r}")
        super().__init__(block)
        self.per_row, self.seed = per_row, seed

    @property
    def params(self) -> tuple:
        return (self.per_row, self.seed, self.block)

    def _compute_states(self, seqlen_q, seqlen_k):
        nq, nk = _cdiv(seqlen_q, self.block), _cdiv(seqlen_k, self.block)
        gen = torch.Generator().manual_seed(hash((self.seed, seqlen_q, seqlen_k, self.block)) & (2**63 - 1))
        take = min(self.per_row, nk)
        chosen = torch.rand(nq, nk, generator=gen).argsort(dim=1)[:, :take]
        states = torch.zeros(nq, nk, dtype=torch.int8)
        states.scatter_(1, chosen, FULL)
        return states

    def element_mask(self, rows, cols, seqlen_q, seqlen_k):
        states = self.block_states(seqlen_q, seqlen_k).to(rows.device)
        return states[rows // self.block][:, cols // self.block] == FULL


class Combined(BlockPattern):
    """``a | b`` (union) or ``a & b`` (intersection) of two block patterns of one block size."""

    def __init__(self, op: str, a: BlockPattern, b: BlockPattern) -> None:
        if not isinstance(a, BlockPattern) or not isinstance(b, BlockPattern):
            raise TypeError(f"| and & combine block patterns, got {type(a).__name__} and {type(b).__name__}")
        if a.block != b.block:
            raise ValueError(f"combined patterns must share a block size, got {a.block} and {b.block}")
        super().__init__(a.block)
        self.op, self.a, self.b = op, a, b
        self.kind = op
        self.per_head = a.per_head or b.per_head

    @property
    def params(self) -> tuple:
        return (self.a.cache_key, self.b.cache_key)

    def validate(self, batch, heads, seqlen_q, seqlen_k):
        self.a.validate(batch, heads, seqlen_q, seqlen_k)
        self.b.validate(batch, heads, seqlen_q, seqlen_k)

    def element_mask(self, rows, cols, seqlen_q, seqlen_k):
        ma = self.a.element_mask(rows, cols, seqlen_q, seqlen_k)
        mb = self.b.element_mask(rows, cols, seqlen_q, seqlen_k)
        return ma | mb if self.op == "union" else ma & mb

    def _compute_states(self, seqlen_q, seqlen_k):
        sa, sb = self.a.block_states(seqlen_q, seqlen_k), self.b.block_states(seqlen_q, seqlen_k)
        if self.op == "union":
            return _states_of((sa == EMPTY) & (sb == EMPTY), (sa == FULL) | (sb == FULL))
        return _states_of((sa == EMPTY) | (sb == EMPTY), (sa == FULL) & (sb == FULL))


class BigBird(Combined):
    """BigBird: a sliding window, global tokens and random blocks, united."""

    def __init__(self, window: int, n_global: int, random_per_row: int, seed: int = 0, block: int = 128) -> None:
        parts = SlidingWindow(window, window, block) | GlobalTokens(n_global, block)
        super().__init__("union", parts, RandomBlocks(random_per_row, seed, block))
        self.kind = "bigbird"


class BlockMask(BlockPattern):
    """A mask from a predicate ``fn(b, h, i, j) -> bool`` over broadcastable index tensors (like
    FlexAttention's ``mask_mod``), for one ``(seqlen_q, seqlen_k)``. The predicate runs block row by
    block row, so memory stays at ``block x seqlen_k``; the states are those of every batch and head
    together (FULL only where full for all), and the element mask may differ per batch and head."""

    kind = "block_mask"
    per_head = True

    def __init__(self, fn: Callable, seqlen_q: int, seqlen_k: int, block: int = 128) -> None:
        if not callable(fn):
            raise TypeError(f"block_mask takes a callable fn(b, h, i, j), got {type(fn).__name__}")
        for name, x in (("seqlen_q", seqlen_q), ("seqlen_k", seqlen_k)):
            if not _is_int(x, 1):
                raise ValueError(f"block_mask {name} must be an int >= 1, got {x!r}")
        super().__init__(block)
        self.fn, self.seqlen_q, self.seqlen_k = fn, seqlen_q, seqlen_k
        self._shape: tuple[int, int] = (1, 1)

    @property
    def params(self) -> tuple:
        return (id(self),)

    @property
    def cache_key(self) -> Hashable:
        return ("block_mask", id(self))

    def validate(self, batch, heads, seqlen_q, seqlen_k):
        if (seqlen_q, seqlen_k) != (self.seqlen_q, self.seqlen_k):
            raise ValueError(
                f"block_mask was built for (seqlen_q, seqlen_k) = ({self.seqlen_q}, {self.seqlen_k}), "
                f"the call has ({seqlen_q}, {seqlen_k})"
            )
        if self._shape != (batch, heads):
            self._shape = (batch, heads)
            self._states.cache_clear()

    def _eval(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        batch, heads = self._shape
        b = torch.arange(batch, device=rows.device)[:, None, None, None]
        h = torch.arange(heads, device=rows.device)[None, :, None, None]
        out = self.fn(b, h, rows[None, None, :, None], cols[None, None, None, :])
        if not isinstance(out, torch.Tensor) or out.dtype != torch.bool:
            raise TypeError("block_mask's fn must return a bool tensor")
        return out.expand(batch, heads, len(rows), len(cols))

    def element_mask(self, rows, cols, seqlen_q, seqlen_k):
        return self._eval(rows, cols)  # (batch, heads, rows, cols): per batch and head

    def _compute_states(self, seqlen_q, seqlen_k):
        nq, nk = _cdiv(seqlen_q, self.block), _cdiv(seqlen_k, self.block)
        states = torch.empty(nq, nk, dtype=torch.int8)
        cols = torch.arange(seqlen_k)
        for m in range(nq):
            rows = torch.arange(m * self.block, min((m + 1) * self.block, seqlen_q))
            mask = self._eval(rows, cols)  # (batch, heads, block, seqlen_k)
            pad = nk * self.block - seqlen_k  # the last key block's missing columns count as allowed
            any_col = torch.nn.functional.pad(mask.any(dim=(0, 1, 2)), (0, pad)).view(nk, self.block).any(1)
            all_col = torch.nn.functional.pad(mask.all(dim=(0, 1, 2)), (0, pad), value=True).view(nk, -1).all(1)
            states[m] = _states_of(~any_col, all_col)
        return states
