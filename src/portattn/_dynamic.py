"""Dynamic sparsity by compaction (``sparse.qk_drop``, ``sparse.hash_buckets``), as Pagliardini et al.
run it: the rows a pattern keeps are gathered, per head, into shorter Q and K/V, ordered by (bucket,
original position), stable, so that causality survives. A query then sees one contiguous range of the
compacted keys, ``[lo, hi]`` in key codes ``bucket * seqlen_k + position`` (the call's band is applied
to original positions there), and the backend runs an ``IntervalMask`` on the short tensors, visiting
only the key blocks inside each query block's range. The result is scattered back; dropped queries
output 0 and lse -inf. Gather and scatter are torch ops, so autograd carries the gradients through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from portattn import _call
from portattn.sparse.dynamic import DynamicPattern, IntervalMask, per_head

if TYPE_CHECKING:
    from portattn._call import AttentionCall

INT32_MAX = 2**31 - 1


def _heads_first(t: torch.Tensor | None, batch: int, heads: int, seqlen: int, device: torch.device) -> torch.Tensor:
    """``(batch, seqlen, heads|1)`` -> ``(batch, heads, seqlen)`` on ``device``; None -> all True."""
    if t is None:
        return torch.ones(batch, heads, seqlen, dtype=torch.bool, device=device)
    return per_head(t.to(device), heads)


class Compaction:
    """Where each call row goes. ``q_order`` ``(batch, heads_q, rows_q)`` and ``k_order`` ``(batch,
    heads_kv, rows_k)``: the original positions gathered, kept rows first; ``q_valid``: which entries
    are real rows (the others pad a head up to the longest); ``mask``: the compacted call's pattern."""

    def __init__(self, pattern: DynamicPattern, call: AttentionCall, device: torch.device) -> None:
        b, sq, sk, hq, hk = call.batch, call.seqlen_q, call.seqlen_k, call.heads_q, call.heads_kv
        q_keep, k_keep = pattern.keep()
        q_bucket, k_bucket = pattern.buckets()
        q_keep, k_keep = _heads_first(q_keep, b, hq, sq, device), _heads_first(k_keep, b, hk, sk, device)
        if q_bucket is None:
            qb = torch.zeros(b, hq, sq, dtype=torch.int64, device=device)
            kb = torch.zeros(b, hk, sk, dtype=torch.int64, device=device)
        else:  # dense bucket ids, shared by queries and keys
            qt, kt = (t.to(device).transpose(1, 2) for t in (q_bucket, k_bucket))
            ids = torch.unique(torch.cat((qt.reshape(-1), kt.reshape(-1))), return_inverse=True)[1]
            qb = ids[: qt.numel()].view(qt.shape).expand(b, hq, sq)
            kb = ids[qt.numel() :].view(kt.shape).expand(b, hk, sk)
        n_buckets = int(max(qb.max().item(), kb.max().item())) + 1 if qb.numel() and kb.numel() else 1
        if n_buckets * max(sk, 1) >= INT32_MAX - 1:
            raise ValueError(f"{pattern.kind}: {n_buckets} buckets x seqlen_k {sk} do not fit 31-bit key codes")
        big = torch.iinfo(torch.int64).max
        # keys: code = bucket * seqlen_k + position; dropped ones sort last
        positions_k = torch.arange(sk, device=device)
        k_code = torch.where(k_keep, kb * sk + positions_k, big)
        k_code, k_order = torch.sort(k_code, dim=-1, stable=True)
        rows_k = max(int(k_keep.sum(-1).max().item()) if k_keep.numel() else 0, 1)
        self.k_order = k_order[..., :rows_k]
        k_code = torch.where(k_code[..., :rows_k] == big, INT32_MAX, k_code[..., :rows_k]).to(torch.int32)
        # queries: ordered by (bucket, position); each sees the codes of its bucket within the band
        positions_q = torch.arange(sq, device=device)
        q_sort = torch.where(q_keep, qb * sq + positions_q, big)
        _, q_order = torch.sort(q_sort, dim=-1, stable=True)
        rows_q = max(int(q_keep.sum(-1).max().item()) if q_keep.numel() else 0, 1)
        self.q_order = q_order[..., :rows_q]
        self.q_valid = torch.gather(q_keep, 2, self.q_order)
        i = self.q_order
        bucket = torch.gather(qb, 2, i) * sk
        lo_band, hi_band = call.band
        lo = bucket + (0 if lo_band is None else (i + lo_band).clamp(0, sk))
        hi = bucket + (sk - 1 if hi_band is None else (i + hi_band).clamp(-1, sk - 1))
        # padding rows see nothing (lo > hi) and keep both bounds non-decreasing along the rows
        lo = torch.where(self.q_valid, lo, INT32_MAX).to(torch.int32)
        hi = torch.where(self.q_valid, hi, INT32_MAX - 1).to(torch.int32)
        self.mask = IntervalMask(lo.contiguous(), hi.contiguous(), k_code.contiguous())
        self.seqlen_q = sq

    def gather(self, t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Rows of ``t`` ``(batch, seqlen, heads, dim)`` in ``order`` ``(batch, heads, rows)``."""
        index = order.transpose(1, 2)[..., None].expand(-1, -1, -1, t.shape[3])
        return torch.gather(t, 1, index)

    def scatter(self, out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The compacted ``out`` ``(batch, rows_q, heads, dim_v)`` and ``lse`` ``(batch, heads, rows_q)``
        back at their positions; rows no kept query lands on get 0 and -inf."""
        sq = self.seqlen_q
        target = torch.where(self.q_valid, self.q_order, sq)  # padding lands on a spare row, cut off
        b, _, h, dv = out.shape
        full = out.new_zeros(b, sq + 1, h, dv)
        full = full.scatter(1, target.transpose(1, 2)[..., None].expand(-1, -1, -1, dv), out)[:, :sq]
        full_lse = lse.new_full((b, h, sq + 1), float("-inf")).scatter(2, target, lse)[..., :sq]
        return full, full_lse


def _check(pattern: DynamicPattern, call: AttentionCall, q, k, bias, precision) -> None:
    for name, value in (("attn_mask (bias)", bias), ("precision", precision)):
        if value is not None:
            raise ValueError(f"{name} cannot be combined with a {pattern.kind} pattern")
    if k.device != q.device:
        raise ValueError(f"{pattern.kind}: k and v must be on q's device (no KV offload with a dynamic pattern)")
    pattern.check_heads_kv(call.heads_kv)


def compacted_call(q, k, v, *, pattern: DynamicPattern, bias=None, precision=None, **options: Any):
    """``(call, compaction, q_c, k_c, v_c)``: the validated original call and the compacted inputs."""
    call = _call.normalize(q, k, v, sparsity=pattern, bias=bias, precision=precision, **options)
    _check(pattern, call, q, k, bias, precision)
    plan = Compaction(pattern, call, q.device)
    return call, plan, plan.gather(q, plan.q_order), plan.gather(k, plan.k_order), plan.gather(v, plan.k_order)


def run(q, k, v, *, pattern: DynamicPattern, scale, softcap, bias, precision, return_lse, backend, **options):
    """``portattn.attention`` with a dynamic pattern: compact, run the interval mask, scatter back."""
    from portattn import _api

    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    call, plan, qc, kc, vc = compacted_call(q, k, v, pattern=pattern, bias=bias, precision=precision,
                                            scale=scale, softcap=softcap, return_lse=True, requires_grad=grad,
                                            **options)  # fmt: skip
    out, lse = _api.run(qc, kc, vc, scale=call.scale, softcap=softcap, sparsity=plan.mask, return_lse=True,
                        backend=backend)  # fmt: skip
    out, lse = plan.scatter(out, lse)
    return (out, lse) if return_lse else out
