"""Two-level tiling path of the ``ascend`` backend: Huawei's FlashAttention tiling in torch ops.

This is the shape of the attention kernel CANN ships for Atlas A2/A3 (``FAInferKernel``), written with
the ``portable`` backend's tiled online softmax (``portattn.backends.portable.tiled``), whose loops it
shares through the ``inner_k`` argument instead of copying them:

- first level, ``q_tile x kv_stack`` (128 query rows x a KV "stack" of 512 keys): one task. On A2 the
  Cube cores (AIC: matmuls, L1/L0 buffers) and the Vector cores (AIV: elementwise work in the Unified
  Buffer) are separate and exchange data only through global memory with cross-core events, so every
  Cube->Vector->Cube hand-off costs a GM round trip and a synchronisation. The stack is the unit of that
  hand-off: per stack, Cube computes ``S = Q K^T``, Vector runs one online-softmax step (bias, mask,
  running max/sum -> ``P``), Cube computes ``P V``, Vector rescales and accumulates. A large stack
  amortises the synchronisation over many keys. Here: one ``(block_q, block_k)`` tile of ``portable``,
  with one online-softmax update per stack.
- second level, ``inner`` (<= 128 keys): inside the Cube core a stack is cut into GEMM tiles that fit
  L1/L0 (``N <= 128``). Here: each matmul of a stack is issued as consecutive matmuls over key
  sub-tiles of at most ``inner`` keys, the score sub-tiles concatenated into the stack's one
  score tile, and ``P V`` (and the gradient matmuls) summed over the same sub-tiles. The softmax is not
  split: it stays per stack, as on the Vector side.
- stacks hidden entirely by the causal/window band are never visited, and stacks a sparsity pattern
  hides entirely are skipped (the kernel's ``noSkipKvS``); masks are materialised only per stack
  (the role of the compressed 2048x2048 mask: never a ``seqlen x seqlen`` tensor).

The backward recomputes scores stack by stack from ``out`` and ``lse`` with the same two levels.
Nothing here is Ascend-specific at run time: it is plain torch and runs on any torch device (CPU in
CI), which is how this path is tested without an NPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from portattn.backends.portable import tiled

if TYPE_CHECKING:
    import torch

    from portattn._call import AttentionCall

Q_TILE = 128  # Q_TILE_CEIL: query rows per task
KV_STACK = 512  # MAX_KV_STACK_LEN: keys per Cube<->Vector hand-off
INNER = 128  # L1_MAX_N_NUM: keys per Cube GEMM tile


def forward(
    call: AttentionCall,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    q_tile: int = Q_TILE,
    kv_stack: int = KV_STACK,
    inner: int = INNER,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (batch, seqlen_q, heads_q, head_dim_v)`` in q's dtype and float32 ``lse (batch, heads_q, seqlen_q)``."""
    return tiled.forward(call, q, k, v, q_tile, kv_stack, inner_k=inner)


def backward(
    call: AttentionCall,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
    dlse: torch.Tensor | None = None,
    *,
    q_tile: int = Q_TILE,
    kv_stack: int = KV_STACK,
    inner: int = INNER,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dq, dk, dv`` by recomputation, stack by stack, from ``out`` and ``lse``."""
    return tiled.backward(call, q, k, v, out, lse, dout, dlse, q_tile, kv_stack, inner_k=inner)
