"""``reference``: the shared float64 oracle as a backend (any device, every feature, slow)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from portattn import _call
from portattn._backend import Backend, Capabilities
from portattn.backends.reference.naive import attention_reference

if TYPE_CHECKING:
    from portattn._call import AttentionCall


class ReferenceBackend(Backend):
    """Dense float64 math with a materialized mask; backward by autograd of the same math."""

    name = "reference"
    priority = 0
    description = "float64 dense math, the oracle of every test; slow, O(seqlen_q * seqlen_k) memory"
    capabilities = Capabilities(
        features=frozenset(_call.FEATURES) - {_call.FP8, _call.KV_OFFLOAD},
        sparsity=None,  # every pattern defines its dense allowed mask
    )

    def forward(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        out, lse = attention_reference(call, q, k, v)
        return out.to(q.dtype), lse.to(torch.float32)

    def backward(self, call, q, k, v, out, lse, dout, dlse=None):
        with torch.enable_grad():
            leaves = [t.detach().to(torch.float64).requires_grad_() for t in (q, k, v)]
            out64, lse64 = attention_reference(call, *leaves)
            outputs, grads = [out64], [dout.to(torch.float64)]
            if dlse is not None:
                outputs.append(lse64)
                grads.append(dlse.to(torch.float64))
            dq, dk, dv = torch.autograd.grad(outputs, leaves, grads)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
