"""Data-dependent patterns (SPEC §3; Pagliardini et al., "Faster Causal Attention Over Large Sequences
Through Sparse Flash Attention", NeurIPS 2023): key/query dropping and hash buckets.

Their semantics is a dense mask like any pattern's (``allowed_mask``), ANDed with causal/window on the
original positions. They are not run as masks: ``portattn._dynamic`` compacts Q and K/V (dropped rows
out, rows ordered by bucket, stably), so that what each query may see becomes one contiguous range of
the compacted keys, an ``IntervalMask``, which a kernel walks block by block; the outputs are
scattered back and dropped queries output 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from portattn.sparse.base import SparsityPattern

if TYPE_CHECKING:
    from collections.abc import Hashable


def _check_rows(name: str, t: torch.Tensor, batch: int, seqlen: int, heads: tuple[int, ...], kind: str) -> None:
    if t.dim() != 3 or t.shape[0] != batch or t.shape[1] != seqlen or t.shape[2] not in heads:
        want = " or ".join(str(h) for h in dict.fromkeys(heads))
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not fit (batch, seqlen, heads) = "
                         f"({batch}, {seqlen}, {want}) {kind}")  # fmt: skip


def _check_dtypes(kind: str, want: str, ok, **tensors: object) -> None:
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not ok(t.dtype):
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"{kind}: {name} must be {want} tensor (batch, seqlen, heads), got {got}")


def per_head(t: torch.Tensor, heads_q: int) -> torch.Tensor:
    """``(batch, seqlen, heads_kv|heads_q|1)`` -> ``(batch, heads_q, seqlen)``: a key head's rows serve
    its query group."""
    t = t.transpose(1, 2)
    return t.repeat_interleave(heads_q // t.shape[1], dim=1) if t.shape[1] != heads_q else t


class DynamicPattern(SparsityPattern):
    """A pattern given by per-row tensors: ``q_rows`` ``(batch, seqlen_q, heads_q|1)`` and ``k_rows``
    ``(batch, seqlen_k, heads_kv|1)``. ``portattn.attention`` runs it by compaction."""

    q_rows: torch.Tensor
    k_rows: torch.Tensor

    @property
    def cache_key(self) -> Hashable:
        return (self.kind, tuple(self.q_rows.shape), tuple(self.k_rows.shape), self.q_rows.device)

    def validate(self, batch: int, heads: int, seqlen_q: int, seqlen_k: int) -> None:
        _check_rows(f"{self.kind} query tensor", self.q_rows, batch, seqlen_q, (heads, 1), "")
        _check_rows(f"{self.kind} key tensor", self.k_rows, batch, seqlen_k, tuple(range(1, heads + 1)), "")
        if heads % self.k_rows.shape[2]:
            raise ValueError(f"{self.kind} key tensor has {self.k_rows.shape[2]} heads, which do not divide {heads}")

    def check_heads_kv(self, heads_kv: int) -> None:
        """The key tensor's heads must be the call's key heads (or 1): compaction moves whole K/V heads."""
        if self.k_rows.shape[2] not in (heads_kv, 1):
            raise ValueError(
                f"{self.kind} key tensor has {self.k_rows.shape[2]} heads; the call has {heads_kv} key/value heads"
            )

    def buckets(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Integer bucket ids of queries and keys (None: one bucket)."""
        return None, None

    def keep(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Boolean keep masks of queries and keys (None: all kept)."""
        return None, None

    def allowed_mask(self, batch: int, heads: int, seqlen_q: int, seqlen_k: int, device: torch.device) -> torch.Tensor:
        q_keep, k_keep = self.keep()
        q_bucket, k_bucket = self.buckets()
        allowed = torch.ones(batch, heads, seqlen_q, seqlen_k, dtype=torch.bool, device=device)
        if q_keep is not None:
            allowed &= per_head(q_keep.to(device), heads)[..., :, None]
            allowed &= per_head(k_keep.to(device), heads)[..., None, :]
        if q_bucket is not None:
            qb, kb = (per_head(t.to(device), heads) for t in (q_bucket, k_bucket))
            allowed &= qb[..., :, None] == kb[..., None, :]
        return allowed


class QKDrop(DynamicPattern):
    kind = "qk_drop"

    def __init__(self, q_keep: torch.Tensor, k_keep: torch.Tensor) -> None:
        _check_dtypes(self.kind, "a torch.bool", lambda dt: dt == torch.bool, q_keep=q_keep, k_keep=k_keep)
        self.q_rows, self.k_rows = q_keep, k_keep

    def keep(self):
        return self.q_rows, self.k_rows


class HashBuckets(DynamicPattern):
    kind = "hash_buckets"

    def __init__(self, q_buckets: torch.Tensor, k_buckets: torch.Tensor) -> None:
        def integer(dt: torch.dtype) -> bool:
            return not (dt.is_floating_point or dt.is_complex or dt == torch.bool)

        _check_dtypes(self.kind, "an integer", integer, q_buckets=q_buckets, k_buckets=k_buckets)
        self.q_rows, self.k_rows = q_buckets, k_buckets

    def buckets(self):
        return self.q_rows, self.k_rows


class IntervalMask(SparsityPattern):
    """What compaction leaves (``portattn._dynamic``): query ``i`` of head ``h`` sees key ``j`` iff
    ``q_lo[b, h, i] <= k_code[b, h // group, j] <= q_hi[b, h, i]``. ``q_lo``, ``q_hi`` int32 ``(batch,
    heads_q, seqlen_q)``, non-decreasing along the queries of a head; ``k_code`` int32 ``(batch,
    heads_kv, seqlen_k)``, increasing along the keys. Kernels find each query block's key range by
    search and mask only its ends."""

    kind = "interval"

    def __init__(self, q_lo: torch.Tensor, q_hi: torch.Tensor, k_code: torch.Tensor) -> None:
        self.q_lo, self.q_hi, self.k_code = q_lo, q_hi, k_code

    @property
    def cache_key(self) -> Hashable:
        return ("interval", tuple(self.q_lo.shape), tuple(self.k_code.shape), self.q_lo.device)

    # equal by shape, as a call's cache keys need: the kernels' launches do not depend on the values
    def __eq__(self, other: object) -> bool:
        return isinstance(other, IntervalMask) and other.cache_key == self.cache_key

    def __hash__(self) -> int:
        return hash(self.cache_key)

    def validate(self, batch: int, heads: int, seqlen_q: int, seqlen_k: int) -> None:
        if tuple(self.q_lo.shape) != (batch, heads, seqlen_q) or self.k_code.shape[::2] != (batch, seqlen_k):
            raise ValueError("interval mask shapes do not fit the call")

    def allowed_mask(self, batch: int, heads: int, seqlen_q: int, seqlen_k: int, device: torch.device) -> torch.Tensor:
        return self.tile_mask(batch, heads, seqlen_q, seqlen_k, (0, seqlen_q), (0, seqlen_k), device)

    def tile_mask(self, batch, heads, seqlen_q, seqlen_k, q_range, k_range, device):
        code = self.k_code[:, :, k_range[0] : k_range[1]].to(device)
        code = code.repeat_interleave(heads // code.shape[1], dim=1)[:, :, None, :]
        lo = self.q_lo[:, :, q_range[0] : q_range[1], None].to(device)
        hi = self.q_hi[:, :, q_range[0] : q_range[1], None].to(device)
        return (code >= lo) & (code <= hi)
