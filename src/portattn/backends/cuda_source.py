"""What the CuPy-compiled backends (``cuda_ampere``, ``cuda_volta``) share on the host, without cupy:
the launch record, header inlining, stride triples, the row alignment their 16-byte loads need, and
the forward and backward around their launches (``cupy_launch`` runs those on the GPU)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from portattn import _alloc

if TYPE_CHECKING:
    from portattn._call import AttentionCall

LOG2E = 1.4426950408889634
# exp2f, tanhf and log2f as the hardware's approximations (ex2.approx etc.), as flash-attn compiles
NVRTC_OPTIONS = ("-std=c++17", "--use_fast_math")


class Launch(NamedTuple):
    name: str  # the template instance, as C++ (CuPy's name_expressions)
    grid: tuple[int, int]
    threads: int
    smem_bytes: int
    args: tuple  # pointers and strides as Python ints (long long), the rest as 32-bit NumPy scalars


COMMON_CSRC = Path(__file__).with_name("cuda_common") / "csrc"  # headers both backends include


def inline_headers(csrc: Path, names: tuple[str, ...]) -> str:
    """The shared headers, then ``names`` (in include order), as one translation unit with their
    includes of each other dropped: the kernel cache keys on this text, so an edit to any header
    compiles afresh."""
    parts = []
    for path in [COMMON_CSRC / "band.cuh", *(csrc / name for name in names)]:
        lines = path.read_text().splitlines()
        parts.append("\n".join(line for line in lines if not line.startswith(('#include "', "#pragma once"))))
    return "\n".join(parts)


def bsh(t: torch.Tensor) -> tuple[int, int, int]:
    """Batch, sequence and head strides of a ``(batch, seqlen, heads, dim)`` tensor."""
    return t.stride(0), t.stride(1), t.stride(2)


def rows_aligned(t: torch.Tensor) -> torch.Tensor:
    """The kernels move 16-byte chunks: the last dim contiguous, the base and every row 16-byte
    aligned. Other layouts are copied once (the kernel could not read them)."""
    return t if _alloc.rows_16b_aligned(t) else t.contiguous()


def cupy_unavailable_reason() -> str | None:
    """Why a CuPy-compiled backend cannot run here (no CUDA device, cupy missing or broken), or None."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # missing, or no driver / toolkit it can load
        return f"cupy is not importable ({type(exc).__name__}: {exc}); pip install 'portattn[cuda]'"
    return None


def forward(launcher: Callable, fwd_launch: Callable, call: AttentionCall, q, k, v):
    """A backend's forward: ``fwd_launch(call, q, k, v, out, lse)`` plans the launch on tensors whose
    rows the kernels can read, and ``launcher(*launches)`` runs it (on the GPU, or emulated in tests).
    ``(out (batch, seqlen_q, heads_q, head_dim_v), lse float32 (batch, heads_q, seqlen_q))``."""
    q, k, v = (rows_aligned(t) for t in (q, k, v))
    out, lse = _alloc.attention_outputs(call, q.dtype, q.device)
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    launcher(fwd_launch(call, q, k, v, out, lse))
    return out, lse


def backward(launcher: Callable, bwd_launches: Callable, call: AttentionCall, q, k, v, out, lse, dout, *,
             dq_float32: bool = False, delta_launch: Callable | None = None):  # fmt: skip
    """A backend's FlashAttention-2 backward, its launches run by ``launcher(*launches)``: delta =
    rowsum(dout * out), then the launches ``bwd_launches(call, q, k, v, dout, lse, delta, dq, dk, dv)``
    plans. Without ``delta_launch`` delta is a torch reduction; with it, ``delta_launch(call, out, dout,
    lse, delta, lse2, dq_zero)`` computes it, rewrites lse in base 2 (``lse2``, what the launches then
    get) and zeroes ``dq_zero`` when given. ``dq_float32`` (needs ``delta_launch``, which zeroes it):
    the launches add into a float32 dQ (by atomics), rounded to the inputs' dtype at the end. ``(dq, dk,
    dv)``."""
    if dq_float32 and delta_launch is None:
        raise ValueError("dq_float32 needs a delta_launch to zero the float32 dQ")
    q, k, v, out, dout = (rows_aligned(t) for t in (q, k, v, out, dout))
    lse = lse.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    dq_sum = torch.empty(q.shape, dtype=torch.float32, device=q.device) if dq_float32 else dq
    launches = []
    if delta_launch is None:
        delta = (dout.float() * out.float()).sum(-1).transpose(1, 2).contiguous()  # (batch, heads_q, seqlen_q)
    else:
        delta, lse2 = torch.empty_like(lse), torch.empty_like(lse)
        launches.append(delta_launch(call, out, dout, lse, delta, lse2, dq_sum if dq_float32 else None))
        lse = lse2
    launches += bwd_launches(call, q, k, v, dout, lse, delta, dq_sum, dk, dv)
    launcher(*launches)
    if dq_float32:
        dq.copy_(dq_sum)
    return dq, dk, dv
