"""Mapping of a portattn call onto ``torch_npu.npu_fusion_attention`` (SPEC §2, the ``ascend`` backend).

``plan(call)`` decides, from shapes and flags only, which ``sparse_mode`` and band arguments express
the call (or why none does); ``run(plan, call, q, k, v, op)`` materializes the mask/bias tensors and
calls the op. Causal and window calls use the compressed 2048x2048 mask — the "tiling-mask": one small
reusable tile instead of a ``seqlen_q x seqlen_k`` tensor. The op is passed in, so the mapping is
tested on the CPU against ``emulation.npu_fusion_attention_emulated``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from portattn.backends.reference.naive import band_mask

if TYPE_CHECKING:
    from portattn._call import AttentionCall

MAX_TOCKENS = 2147483647
COMPRESSED = "compressed"  # FusedPlan.atten_mask marker: the cached 2048x2048 tile
DENSE = "dense"  # FusedPlan.atten_mask marker: ~(allowed & band) built from call.sparsity
MAX_HEAD_DIM = 768  # documented: D in 1..768
MAX_HEADS = 256  # documented: Nq <= 256

_COMPRESSED_MASKS: dict[torch.device, torch.Tensor] = {}


def compressed_mask(device: torch.device | str) -> torch.Tensor:
    """The bool ``(2048, 2048)`` ``triu(ones, 1)`` mask (True = masked out), cached per device."""
    device = torch.device(device)
    mask = _COMPRESSED_MASKS.get(device)
    if mask is None:
        mask = torch.triu(torch.ones(2048, 2048, dtype=torch.bool, device=device), diagonal=1)
        _COMPRESSED_MASKS[device] = mask
    return mask


@dataclass(frozen=True)
class FusedPlan:
    """Keyword arguments for ``npu_fusion_attention`` (tensor-free, so a plan can be cached).

    ``atten_mask`` is None, ``COMPRESSED`` or ``DENSE``; ``pse`` is True when the call's bias is passed
    as ``pse = bias / scale`` (the op scales ``pse`` together with ``QK^T``).
    """

    sparse_mode: int
    scale: float
    head_num: int
    pre_tockens: int = MAX_TOCKENS
    next_tockens: int = MAX_TOCKENS
    atten_mask: str | None = None
    pse: bool = False
    inner_precise: int = 0
    input_layout: str = "BSND"

    def kwargs(self, call: AttentionCall, device: torch.device) -> dict:
        """The op's keyword arguments with the mask (bool, True = out) and pse tensors built."""
        mask = None
        if self.atten_mask == COMPRESSED:
            mask = compressed_mask(device)
        elif self.atten_mask == DENSE:
            allowed = call.sparsity.mask.to(device) & band_mask(call.seqlen_q, call.seqlen_k, call.band, device)
            heads = 1 if allowed.shape[1] == 1 else call.heads_q
            mask = (~allowed).expand(call.batch, heads, call.seqlen_q, call.seqlen_k).contiguous()
        pse = None
        if self.pse:
            bias = call.bias.to(device)
            pse = (bias / self.scale).expand(bias.shape[0], call.heads_q, *bias.shape[2:]).to(call.dtype).contiguous()
        return {
            "head_num": self.head_num,
            "input_layout": self.input_layout,
            "pse": pse,
            "atten_mask": mask,
            "scale": self.scale,
            "pre_tockens": self.pre_tockens,
            "next_tockens": self.next_tockens,
            "inner_precise": self.inner_precise,
            "sparse_mode": self.sparse_mode,
        }


def _band_may_empty_rows(call: AttentionCall) -> bool:
    """Whether some query row sees no key under ``call.band`` alone."""
    lo, hi = call.band
    if call.seqlen_k == 0:
        return True
    if call.seqlen_q == 0:
        return False
    lo = -math.inf if lo is None else lo
    hi = math.inf if hi is None else hi
    # row i sees j in [max(0, i + lo), min(sk - 1, i + hi)]; emptiness is worst at the first or last row
    return any(max(0, i + lo) > min(call.seqlen_k - 1, i + hi) for i in (0, call.seqlen_q - 1)) or lo > hi


def plan(call: AttentionCall) -> FusedPlan | str:
    """The op's arguments for ``call``, or a human-readable reason why the op cannot express it."""
    if call.softcap is not None:
        return "npu_fusion_attention has no softcap"
    if call.head_dim_v > call.head_dim:
        return f"npu_fusion_attention needs Dq = Dk >= Dv, got head_dim {call.head_dim} < head_dim_v {call.head_dim_v}"
    if call.head_dim > MAX_HEAD_DIM:
        return f"npu_fusion_attention supports head_dim <= {MAX_HEAD_DIM}, got {call.head_dim}"
    if call.heads_q > MAX_HEADS:
        return f"npu_fusion_attention supports heads_q <= {MAX_HEADS}, got {call.heads_q}"
    if call.precision == "fp8":
        return "npu_fusion_attention has no fp8 path"
    if call.sparsity is not None and call.sparsity.kind != "dense_mask":
        return f"npu_fusion_attention takes only dense masks, not sparsity kind {call.sparsity.kind!r}"
    common = {"scale": call.scale, "head_num": call.heads_q, "pse": call.bias is not None}
    empty = 2 if _band_may_empty_rows(call) else 0
    if call.sparsity is not None:
        return FusedPlan(sparse_mode=1, atten_mask=DENSE, inner_precise=2, **common)
    lo, hi = call.band
    off = call.seqlen_k - call.seqlen_q
    if lo is None and hi is None:
        return FusedPlan(sparse_mode=0, **common)
    if lo is None and hi == off:
        return FusedPlan(sparse_mode=3, atten_mask=COMPRESSED, inner_precise=empty, **common)
    if lo is None and hi == 0:
        return FusedPlan(sparse_mode=2, atten_mask=COMPRESSED, inner_precise=empty, **common)
    pre = MAX_TOCKENS if lo is None else off - lo
    nxt = MAX_TOCKENS if hi is None else hi - off
    return FusedPlan(
        sparse_mode=4, atten_mask=COMPRESSED, pre_tockens=pre, next_tockens=nxt, inner_precise=empty, **common
    )


def run(
    fused: FusedPlan, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, op: Callable
) -> tuple[torch.Tensor, torch.Tensor]:
    """Call ``op`` (``npu_fusion_attention`` or its emulation) on portattn's ``(batch, seqlen, heads, dim)``.

    Returns:
        ``out`` ``(batch, seqlen_q, heads_q, head_dim_v)`` in ``q``'s dtype and ``lse`` float32
        ``(batch, heads_q, seqlen_q)`` = ``softmax_max + log(softmax_sum)``, -inf where the sum is 0.
    """
    result = op(q.contiguous(), k.contiguous(), v.contiguous(), **fused.kwargs(call, q.device))
    out, softmax_max, softmax_sum = result[0], result[1][..., 0].float(), result[2][..., 0].float()
    empty = softmax_sum == 0
    lse = softmax_max + torch.log(torch.where(empty, torch.ones_like(softmax_sum), softmax_sum))
    lse = torch.where(empty, torch.full_like(lse, float("-inf")), lse)
    return out, lse
