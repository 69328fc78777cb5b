"""What the CuPy-compiled backends (``cuda_ampere``, ``cuda_volta``) share on the host, without cupy:
the launch record, header inlining, stride triples and the row alignment their 16-byte loads need."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from portattn import _alloc

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
