"""``portable``: tiled online-softmax attention in plain torch, on any torch device; the CPU default."""

from __future__ import annotations

from typing import TYPE_CHECKING

from portattn import _call
from portattn._backend import Backend, Capabilities
from portattn.backends.portable import tiled

if TYPE_CHECKING:
    import torch

    from portattn._call import AttentionCall


class PortableBackend(Backend):
    """FlashAttention-2's algorithm with torch ops: O(seqlen) extra memory, forward and backward.

    Args:
        block_q, block_k: tile sizes; larger tiles mean fewer Python steps and more memory per step.
    """

    name = "portable"
    priority = 100
    description = "tiled online-softmax in plain torch, any device, O(seqlen) extra memory"
    capabilities = Capabilities(
        features=frozenset(_call.FEATURES) - {_call.FP8},
        sparsity=None,  # every pattern can produce its tile masks
    )

    def __init__(self, block_q: int = 256, block_k: int = 256) -> None:
        self.block_q = block_q
        self.block_k = block_k

    def forward(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        return tiled.forward(call, q, k, v, self.block_q, self.block_k)

    def backward(self, call, q, k, v, out, lse, dout, dlse=None):
        return tiled.backward(call, q, k, v, out, lse, dout, dlse, self.block_q, self.block_k)
