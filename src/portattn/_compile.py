"""``torch.compile`` support: ``portattn.attention`` as one opaque custom op with a fake implementation.

While dynamo traces, ``attention()`` calls ``torch.ops.portattn.attention`` instead of dispatching
in Python, so the graph has no break; the op dispatches (argument, context, environment, cache)
when the compiled graph runs. The backward is a second op. Calls with a sparsity pattern or
``precision`` are not routed here (a pattern is a Python object, not an op argument).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

NO_WINDOW = -2  # window sides are >= -1, so -2 marks "no window"


def _resolve(q, k, v, causal, window_left, window_right, scale, softcap, backend, requires_grad):
    from portattn import _api

    window = None if window_left == NO_WINDOW else (window_left, window_right)
    return _api.resolve(
        q, k, v, causal=causal, window=window, scale=scale, softcap=softcap, sparsity=None, bias=None,
        precision=None, return_lse=True, backend=backend or None, top_left=False, grad=requires_grad,
    )  # fmt: skip


@torch.library.custom_op("portattn::attention", mutates_args=())
def attention_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool,
    window_left: int,
    window_right: int,
    scale: float | None,
    softcap: float | None,
    backend: str,
    requires_grad: bool,
) -> tuple[Tensor, Tensor]:
    """``(out, lse)``: contiguous ``(batch, seqlen_q, heads_q, head_dim_v)``, float32 ``(batch, heads_q, seqlen_q)``."""
    call, chosen = _resolve(q, k, v, causal, window_left, window_right, scale, softcap, backend, requires_grad)
    out, lse = chosen.forward(call, q, k, v)
    return out.contiguous(), lse.contiguous()


@attention_op.register_fake
def _attention_fake(q, k, v, causal, window_left, window_right, scale, softcap, backend, requires_grad):
    batch, seqlen_q, heads_q, _ = q.shape
    out = q.new_empty(batch, seqlen_q, heads_q, v.shape[-1])
    return out, q.new_empty(batch, heads_q, seqlen_q, dtype=torch.float32)


@torch.library.custom_op("portattn::attention_backward", mutates_args=())
def attention_backward_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    dout: Tensor,
    dlse: Tensor | None,
    causal: bool,
    window_left: int,
    window_right: int,
    scale: float | None,
    softcap: float | None,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)``, contiguous, by the backend that served the forward (same dispatch)."""
    call, chosen = _resolve(q, k, v, causal, window_left, window_right, scale, softcap, backend, True)
    kwargs = {"dlse": dlse} if dlse is not None else {}
    dq, dk, dv = chosen.backward(call, q, k, v, out, lse, dout, **kwargs)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


@attention_backward_op.register_fake
def _attention_backward_fake(q, k, v, out, lse, dout, dlse, causal, window_left, window_right, scale, softcap,
                             backend):  # fmt: skip
    return (
        torch.empty_like(q, memory_format=torch.contiguous_format),
        torch.empty_like(k, memory_format=torch.contiguous_format),
        torch.empty_like(v, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, causal, window_left, window_right, scale, softcap, backend, _ = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.args = (causal, window_left, window_right, scale, softcap, backend)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = attention_backward_op(q, k, v, out, lse, dout, dlse, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None, None


attention_op.register_autograd(_backward, setup_context=_setup_context)


def attention(q, k, v, causal, window, scale, softcap, return_lse, backend) -> Any:
    """What ``portattn.attention`` does while dynamo traces it."""
    left, right = (NO_WINDOW, NO_WINDOW) if window is None else window
    requires_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    out, lse = attention_op(q, k, v, causal, left, right, scale, softcap, backend or "", requires_grad)
    return (out, lse) if return_lse else out
