"""Attention over a key/value sequence split across devices: merge partial results by their LSE.

Device-agnostic building blocks (forward only):

- :func:`merge_partials` merges partial attention results computed over *disjoint* key sets, in one
  process (e.g. chunks of a long K/V processed one after another).
- :func:`tiling_allreduce` is the multi-device form: every rank holds all the queries and one
  contiguous shard of the keys/values, computes its partial ``(out, lse)`` with portattn, and the
  partials are merged with ``torch.distributed`` all-reduces. It runs on any process group: HCCL on
  Ascend NPUs (FastAttention's "tiling-AllReduce"), NCCL on CUDA GPUs, gloo on the CPU.

The merge (``lse`` in natural log, one partial ``p`` per key set)::

    m   = max_p lse_p
    w_p = exp(lse_p - m)                   # 0 where lse_p = -inf
    out = sum_p w_p * out_p / sum_p w_p    # 0 where sum_p w_p = 0 (no key visible anywhere)
    lse = m + log(sum_p w_p)               # -inf where no key is visible

See ``docs/distributed.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from portattn import _call

__all__ = ["merge_partials", "tiling_allreduce"]


def _weights(lses: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``exp(lse - m)`` with ``m = -inf`` rows made safe (weight 0 instead of ``exp(nan)``)."""
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return torch.exp(lses - m_safe), m_safe


def _finish(
    num: torch.Tensor, den: torch.Tensor, m_safe: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``out = num / den`` (0 where ``den == 0``), ``lse = m + log(den)`` (-inf where ``den == 0``).

    ``num`` is ``(batch, seqlen_q, heads, head_dim_v)`` fp32, ``den`` and ``m_safe`` ``(batch, heads, seqlen_q)``.
    """
    seen = den > 0
    den_bshd = den.transpose(1, 2).unsqueeze(-1)
    out = torch.where(seen.transpose(1, 2).unsqueeze(-1), num / torch.where(den_bshd > 0, den_bshd, 1.0), 0.0)
    lse = torch.where(seen, m_safe + torch.log(torch.where(seen, den, 1.0)), float("-inf"))
    return out.to(dtype), lse


def _weighted(out: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``out * w`` in fp32 with ``w`` ``(batch, heads, seqlen_q)`` broadcast; exactly 0 where ``w == 0``."""
    w_bshd = w.transpose(1, 2).unsqueeze(-1)
    return torch.where(w_bshd > 0, out.float() * w_bshd, 0.0)


def merge_partials(outs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial attention results over disjoint key sets into the result over their union.

    Args:
        outs: partial outputs, each ``(batch, seqlen_q, heads, head_dim_v)``, normalised within its
            own keys (what ``portattn.attention(..., return_lse=True)`` returns).
        lses: the matching log-sum-exps, each float32 ``(batch, heads, seqlen_q)``, natural log,
            ``-inf`` for a row that saw no key in that part.

    Returns:
        ``(out, lse)``: ``out`` in the dtype of ``outs[0]``, ``lse`` float32. The merge runs in fp32
        and is numerically safe: a row whose ``lse`` is ``-inf`` in every part gets out 0 and lse
        ``-inf``, never NaN. The result does not depend on the order of the parts (up to rounding).
        Forward only in spirit: it is plain torch ops, so autograd flows, but it is meant for inference.
    """
    outs, lses = list(outs), list(lses)
    if not outs or len(outs) != len(lses):
        raise ValueError(f"outs and lses must be non-empty lists of equal length, got {len(outs)} and {len(lses)}")
    b, s, h, _ = outs[0].shape
    for i, (o, lse) in enumerate(zip(outs, lses, strict=True)):
        if o.dim() != 4 or o.shape != outs[0].shape:
            raise ValueError(f"outs[{i}] must have the shape of outs[0] {tuple(outs[0].shape)}, got {tuple(o.shape)}")
        if tuple(lse.shape) != (b, h, s):
            raise ValueError(f"lses[{i}] must be (batch, heads, seqlen_q) = {(b, h, s)}, got {tuple(lse.shape)}")
    stacked = torch.stack([lse.float() for lse in lses])  # (parts, B, H, Sq)
    m = stacked.amax(dim=0)
    w, m_safe = _weights(stacked, m)
    num = sum(_weighted(o, w[i]) for i, o in enumerate(outs))
    return _finish(num, w.sum(dim=0), m_safe, outs[0].dtype)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def tiling_allreduce(
    q: torch.Tensor,
    k_shard: torch.Tensor,
    v_shard: torch.Tensor,
    *,
    kv_offset: int,
    seqlen_k: int,
    causal: bool = False,
    window: tuple[int, int] | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    group: Any = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact attention of all queries over a K/V sequence sharded across the ranks of ``group``.

    Every rank holds all queries ``q`` ``(batch, seqlen_q, heads_q, head_dim)`` and one contiguous
    shard ``k_shard``/``v_shard`` ``(batch, shard_len, heads_kv, head_dim[_v])`` of a global K/V of
    ``seqlen_k`` keys, starting at global key position ``kv_offset``. The shards of all ranks must
    tile ``[0, seqlen_k)`` without overlap (shards may be empty and of unequal lengths). Each rank
    computes its partial ``(out, lse)`` with portattn (its own fastest backend), then the partials are
    merged by LSE with three reductions in two collectives: an all-reduce MAX of ``lse``, then one
    fused all-reduce SUM of ``[out * exp(lse - max), exp(lse - max)]`` in fp32. Every rank ends with
    the same result, equal to ``portattn.attention`` over the whole K/V.

    On Ascend NPUs (HCCL group) this is the "tiling-AllReduce" of FastAttention: the KV sequence is
    split across devices; it works the same with NCCL on GPUs and gloo on the CPU.

    Forward only: no gradient flows through the collectives, so inputs requiring grad are refused
    while grad mode is on (use ``torch.no_grad()`` / ``torch.inference_mode()``).

    Args:
        causal: bottom-right aligned over the GLOBAL sequence: query ``i`` sees global key ``j`` iff
            ``j <= i + seqlen_k - seqlen_q``.
        window: ``(left, right)`` over GLOBAL key positions, as in ``portattn.attention``.
        scale, softcap: as in ``portattn.attention``.
        group: the process group (``None``: the default group, which must be initialised).
        return_lse: also return the global ``lse`` float32 ``(batch, heads_q, seqlen_q)``.

    Returns:
        ``out (batch, seqlen_q, heads_q, head_dim_v)`` in q's dtype, or ``(out, lse)``. A row that
        sees no key anywhere has out 0 and lse ``-inf``.

    Raises:
        ValueError: ``kv_offset`` or ``seqlen_k`` out of range (``kv_offset + shard_len > seqlen_k``),
            or the arguments ``portattn.attention`` would refuse.
        TypeError: wrong argument types.
        RuntimeError: ``torch.distributed`` not initialised, or inputs require grad.
    """
    import torch.distributed as dist

    from portattn._api import run

    for name, t in (("q", q), ("k_shard", k_shard), ("v_shard", v_shard)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, seqlen, heads, head_dim), got shape {tuple(t.shape)}")
    kv_offset = _check_int("kv_offset", kv_offset, 0)
    seqlen_k = _check_int("seqlen_k", seqlen_k, 1)
    shard_len = k_shard.shape[1]
    if kv_offset + shard_len > seqlen_k:
        raise ValueError(
            f"kv_offset ({kv_offset}) + shard length ({shard_len}) must be <= seqlen_k ({seqlen_k}): "
            "the shard must lie inside the global key sequence"
        )
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__} {causal!r}")
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__} {return_lse!r}")
    window = _call._check_window(window)
    if torch.is_grad_enabled() and (q.requires_grad or k_shard.requires_grad or v_shard.requires_grad):
        raise RuntimeError(
            "tiling_allreduce is forward only (no gradient through the collectives): "
            "call it under torch.no_grad() or torch.inference_mode(), or pass detached tensors"
        )
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("tiling_allreduce needs torch.distributed initialised (dist.init_process_group)")

    batch, seqlen_q, heads_q, _ = q.shape
    lo, hi = _call.band_of(seqlen_q, seqlen_k, causal, window, False)
    band = (None if lo is None else lo - kv_offset, None if hi is None else hi - kv_offset)
    if shard_len == 0:  # nothing to see here; still validate shapes through the same checks
        _call.normalize(q, k_shard, v_shard, causal=False, window=None, scale=scale, softcap=softcap,
                        sparsity=None, bias=None, precision=None, return_lse=True, top_left=False)  # fmt: skip
        out = q.new_zeros((batch, seqlen_q, heads_q, v_shard.shape[3]))
        lse = torch.full((batch, heads_q, seqlen_q), float("-inf"), dtype=torch.float32, device=q.device)
    else:
        out, lse = run(q, k_shard, v_shard, band=band, scale=scale, softcap=softcap, return_lse=True)

    m = lse.float().clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    w, m_safe = _weights(lse.float(), m)
    num = _weighted(out, w)
    buf = torch.cat([num.reshape(-1), w.reshape(-1)])
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    num, den = buf[: num.numel()].view(num.shape), buf[num.numel() :].view(w.shape)
    out, lse = _finish(num, den, m_safe, q.dtype)
    return (out, lse) if return_lse else out
