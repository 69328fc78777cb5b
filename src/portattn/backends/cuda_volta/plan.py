"""Host-side plan of a ``cuda_volta`` launch, without cupy (unit-tested on CPU): template instance,
grid, shared memory and argument list, and the source text NVRTC compiles."""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from portattn._call import AttentionCall
from portattn.backends.cuda_source import LOG2E, NVRTC_OPTIONS, Launch, bsh, inline_headers
from portattn.backends.cuda_volta.wmma_order import RegisterSoftmax, header

__all__ = ["NVRTC_OPTIONS", "Launch"]

CSRC = Path(__file__).with_name("csrc")
SOURCES = ("common_sm70.cuh", "flash_fwd_sm70.cuh", "flash_bwd_sm70.cuh")  # in include order
BLOCK_N = 64  # the forward's keys per block


class FwdConfig(NamedTuple):
    warps: int  # per block, 16 query rows each
    q_in_registers: bool  # else Q's fragments are read from shared memory for every key block


# by tile width. Not yet timed on a GPU; chosen from what ptxas makes of each (benchmarks/volta_sass.py,
# sm_90) and from occupancy. d=128: 8 warps issue 10% fewer instructions per key block than 4 (half
# the K/V tile loads per thread) at the same 8 warps per SM on an H100 (registers), and on a 96 KB
# Volta SM the shared-memory softmax fits one block either way: 8 warps there, not 4. d=64: 4 warps
# keep 12 warps per SM on an H100 where 8 keep 8 (registers), for 8% more instructions.
FWD_CONFIGS = {64: FwdConfig(4, True), 128: FwdConfig(8, True)}
BWD_KEYS, BWD_QUERIES = 64, 32  # the dK/dV kernel: keys per block, queries per step
DQ_ROWS, DQ_KEYS = 64, 32  # the dQ kernel: queries per block, keys per step
THREADS = 128
MAX_SMEM = 96 * 1024  # a Volta block's shared memory (with the opt-in above 48 KB)


@functools.cache
def source(order: RegisterSoftmax | None = None) -> str:
    """The kernels' source; with the facts of a WMMA element order the host checked on the GPU, the
    forward's register-softmax instances (``register_softmax=True``) compile too."""
    return header(order) + inline_headers(CSRC, SOURCES)


def width(head_dim: int) -> int:
    return 64 if head_dim <= 64 else 128


def fwd_rows(head_dim: int) -> int:
    """The forward's query rows per block."""
    return 16 * FWD_CONFIGS[width(head_dim)].warps


def smem_bytes(head_dim: int, register_softmax: bool = False) -> int:
    """K and V (rows padded by 8 halves), S in fp32 (rows padded by 4, P written over it) unless the
    softmax runs in registers, and Q unless it stays in registers (then it passes through K and V's
    space at the start); O's fp32 staging goes over all of it at the end. As laid out in the kernel."""
    w, rows = width(head_dim), fwd_rows(head_dim)
    q_bytes = 0 if FWD_CONFIGS[w].q_in_registers else rows * (w + 8) * 2
    s_bytes = 0 if register_softmax else rows * (BLOCK_N + 4) * 4
    return max(2 * BLOCK_N * (w + 8) * 2 + s_bytes + q_bytes, rows * (w + 4) * 4)


def bwd_smem_bytes(head_dim: int, kernel: str) -> int:
    """The dK/dV kernel: K, V (64 rows), Q, dO (32 rows), S^T and dP^T in fp32, the rows' stats; the
    dQ kernel: Q, dO (64 rows), K, V (32 rows), S and dP, the stats. Both at least the fp32 staging
    of their 64 result rows."""
    w = width(head_dim)
    if kernel == "dkdv":
        size = 2 * (BWD_KEYS + BWD_QUERIES) * (w + 8) * 2 + 2 * BWD_KEYS * (BWD_QUERIES + 4) * 4 + 2 * BWD_QUERIES * 4
    else:
        size = 2 * (DQ_ROWS + DQ_KEYS) * (w + 8) * 2 + 2 * DQ_ROWS * (DQ_KEYS + 4) * 4 + 2 * DQ_ROWS * 4
    return max(size, 64 * (w + 4) * 4)


def _cpp(flag: bool) -> str:
    return "true" if flag else "false"


def kernel_name(kernel: str, head_dim: int, has_lo: bool, has_hi: bool, register_softmax: bool = False) -> str:
    flags = f"{_cpp(has_lo)}, {_cpp(has_hi)}"
    if kernel == "flash_fwd_sm70":
        config = FWD_CONFIGS[width(head_dim)]
        return (f"portattn_sm70::{kernel}<{width(head_dim)}, {config.warps}, {_cpp(config.q_in_registers)}, "
                f"{_cpp(register_softmax)}, {flags}>")  # fmt: skip
    return f"portattn_sm70::{kernel}<{width(head_dim)}, {flags}>"


def fwd_name(head_dim: int, has_lo: bool, has_hi: bool, register_softmax: bool = False) -> str:
    return kernel_name("flash_fwd_sm70", head_dim, has_lo, has_hi, register_softmax)


KERNELS = ("flash_fwd_sm70", "flash_bwd_dkdv_sm70", "flash_bwd_dq_sm70")


def all_instances(register_softmax: bool = False) -> list[str]:
    """Every template instance a launch can ask for (the compile test builds them all); with
    ``register_softmax``, the forward's register-softmax instances only (they need ``source(order)``)."""
    if register_softmax:
        combos = itertools.product((64, 128), itertools.product((False, True), repeat=2))
        return [fwd_name(w, *flags, register_softmax=True) for w, flags in combos]
    combos = itertools.product(KERNELS, (64, 128), itertools.product((False, True), repeat=2))
    return [kernel_name(kernel, w, *flags) for kernel, w, flags in combos]


def _scalars(call: AttentionCall, heads: int) -> tuple:
    """seqlen_q, seqlen_k, the kernel's head count, group, dim, band_lo, band_hi, scale * log2(e)."""
    lo, hi = call.band
    return (
        np.int32(call.seqlen_q), np.int32(call.seqlen_k), np.int32(heads), np.int32(call.group_size),
        np.int32(call.head_dim), np.int32(lo if lo is not None else 0), np.int32(hi if hi is not None else 0),
        np.float32(call.scale * LOG2E),
    )  # fmt: skip


def fwd_launch(call: AttentionCall, q, k, v, out, lse, *, register_softmax: bool = False) -> Launch:
    """Tensors are ``rows_aligned`` already; pointers and strides as Python ints, the rest int32/float32.
    ``register_softmax``: the instance that keeps S and P in registers (the source must be
    ``source(order)`` with the GPU's checked order)."""
    lo, hi = call.band
    args = (q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(), *bsh(q), *bsh(k), *bsh(v),
            *bsh(out), *_scalars(call, call.heads_q))  # fmt: skip
    grid = (math.ceil(call.seqlen_q / fwd_rows(call.head_dim)), call.batch * call.heads_q)
    name = fwd_name(call.head_dim, lo is not None, hi is not None, register_softmax)
    threads = 32 * FWD_CONFIGS[width(call.head_dim)].warps
    return Launch(name, grid, threads, smem_bytes(call.head_dim, register_softmax), args)


def bwd_launches(call: AttentionCall, q, k, v, dout, lse, delta, dq, dk, dv) -> tuple[Launch, Launch]:
    """The dK/dV launch (blocks of 64 keys per K/V head) and the dQ launch (blocks of 64 queries);
    ``lse`` and ``delta`` = rowsum(dout * out) float32 ``(batch, heads_q, seqlen_q)``, contiguous."""
    lo, hi = call.band
    flags = (lo is not None, hi is not None)
    pointers = (q.data_ptr(), k.data_ptr(), v.data_ptr(), dout.data_ptr(), lse.data_ptr(), delta.data_ptr())
    strides = (*bsh(q), *bsh(k), *bsh(v), *bsh(dout))
    scale = np.float32(call.scale)
    dkdv = Launch(
        kernel_name("flash_bwd_dkdv_sm70", call.head_dim, *flags),
        (math.ceil(call.seqlen_k / BWD_KEYS), call.batch * call.heads_kv), THREADS,
        bwd_smem_bytes(call.head_dim, "dkdv"),
        (*pointers, dk.data_ptr(), dv.data_ptr(), *strides, *bsh(dk), *bsh(dv), *_scalars(call, call.heads_kv), scale),
    )  # fmt: skip
    dq_launch = Launch(
        kernel_name("flash_bwd_dq_sm70", call.head_dim, *flags),
        (math.ceil(call.seqlen_q / DQ_ROWS), call.batch * call.heads_q), THREADS, bwd_smem_bytes(call.head_dim, "dq"),
        (*pointers, dq.data_ptr(), *strides, *bsh(dq), *_scalars(call, call.heads_q), scale),
    )  # fmt: skip
    return dkdv, dq_launch
