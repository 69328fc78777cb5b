"""Host-side plan of a ``cuda_volta`` launch, without cupy (unit-tested on CPU): template instance,
grid, shared memory and argument list, and the source text NVRTC compiles."""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path

import numpy as np

from portattn._call import AttentionCall
from portattn.backends.cuda_source import LOG2E, NVRTC_OPTIONS, Launch, bsh, inline_headers

__all__ = ["NVRTC_OPTIONS", "Launch"]

CSRC = Path(__file__).with_name("csrc")
SOURCES = ("flash_fwd_sm70.cuh",)
BLOCK_M = BLOCK_N = 64
THREADS = 128
MAX_SMEM = 96 * 1024  # a Volta block's shared memory (with the opt-in above 48 KB)


@functools.cache
def source() -> str:
    return inline_headers(CSRC, SOURCES)


def width(head_dim: int) -> int:
    return 64 if head_dim <= 64 else 128


def smem_bytes(head_dim: int) -> int:
    """Q, K, V (rows padded by 8 halves), S / O staging in fp32 (rows padded by 4), P in fp16, and
    the rows' corrections; as laid out in the kernel."""
    w = width(head_dim)
    return 3 * BLOCK_M * (w + 8) * 2 + BLOCK_M * (max(BLOCK_N, w) + 4) * 4 + BLOCK_M * (BLOCK_N + 8) * 2 + BLOCK_M * 4


def fwd_name(head_dim: int, has_lo: bool, has_hi: bool) -> str:
    flags = ", ".join("true" if f else "false" for f in (has_lo, has_hi))
    return f"portattn_sm70::flash_fwd_sm70<{width(head_dim)}, {flags}>"


def all_instances() -> list[str]:
    """Every template instance a launch can ask for (the compile test builds them all)."""
    flag_sets = itertools.product((False, True), repeat=2)
    return [fwd_name(w, *flags) for w, flags in itertools.product((64, 128), flag_sets)]


def fwd_launch(call: AttentionCall, q, k, v, out, lse) -> Launch:
    """Tensors are ``rows_aligned`` already; pointers and strides as Python ints, the rest int32/float32."""
    lo, hi = call.band
    args = (
        q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(),
        *bsh(q), *bsh(k), *bsh(v), *bsh(out),
        np.int32(call.seqlen_q), np.int32(call.seqlen_k), np.int32(call.heads_q), np.int32(call.group_size),
        np.int32(call.head_dim), np.int32(lo if lo is not None else 0), np.int32(hi if hi is not None else 0),
        np.float32(call.scale * LOG2E),
    )  # fmt: skip
    grid = (math.ceil(call.seqlen_q / BLOCK_M), call.batch * call.heads_q)
    name = fwd_name(call.head_dim, lo is not None, hi is not None)
    return Launch(name, grid, THREADS, smem_bytes(call.head_dim), args)
