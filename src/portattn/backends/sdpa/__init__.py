"""``sdpa``: torch's own ``scaled_dot_product_attention`` as a plugin (a baseline and a fallback).

It declares only what SDPA itself does: no softcap, no window, causal only top-left (equal to
bottom-right when ``seqlen_q == seqlen_k``), no lse. Backward recomputes through torch autograd.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from portattn import _call
from portattn._backend import Backend, Capabilities

if TYPE_CHECKING:
    from portattn._call import AttentionCall


def _sdpa(call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    mask = None
    if call.sparsity is not None:
        mask = call.sparsity.mask
    if call.bias is not None:
        mask = call.bias if mask is None else call.bias.masked_fill(~mask, float("-inf"))
    causal = call.band == (None, 0)
    if causal and mask is not None:  # SDPA refuses is_causal with a mask: fold it in
        tri = torch.ones(call.seqlen_q, call.seqlen_k, dtype=torch.bool, device=q.device).tril()
        mask = tri & mask if mask.dtype == torch.bool else mask.masked_fill(~tri, float("-inf"))
        causal = False
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        is_causal=causal,
        scale=call.scale,
        enable_gqa=call.heads_q != call.heads_kv,
    ).transpose(1, 2)
    if mask is not None:  # rows that see no key: 0, whatever SDPA's kernel made of them
        visible = mask.any(-1) if mask.dtype == torch.bool else (mask > float("-inf")).any(-1)
        out = out.masked_fill(~visible.transpose(1, 2).unsqueeze(-1), 0.0)
    return out


class SdpaBackend(Backend):
    """``torch.nn.functional.scaled_dot_product_attention`` in portattn's layout."""

    name = "sdpa"
    priority = 50
    description = "torch.nn.functional.scaled_dot_product_attention (torch picks flash/cuDNN/mem-efficient/math)"
    capabilities = Capabilities(
        features=frozenset({_call.CAUSAL, _call.GQA, _call.BIAS, _call.BACKWARD, _call.HEAD_DIM_V}),
        sparsity=frozenset({"dense_mask"}),
    )

    def extra_reasons(self, call: AttentionCall) -> list[str]:
        if call.band not in ((None, None), (None, 0)):
            return [
                f"causal mask aligned bottom-right with seqlen_q {call.seqlen_q} != seqlen_k {call.seqlen_k} "
                "not supported (SDPA's is_causal is top-left)"
            ]
        return []

    def forward(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        return _sdpa(call, q, k, v), None

    def backward(self, call, q, k, v, out, lse, dout, dlse=None):
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            recomputed = _sdpa(call, *leaves)
            return torch.autograd.grad(recomputed, leaves, dout)
