"""Host-side plan of a ``cuda_ampere`` launch, without cupy (unit-tested on CPU): which template
instance, its tile config, grid, shared memory and argument list, and the source text NVRTC compiles."""

from __future__ import annotations

import functools
import itertools
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from portattn._call import AttentionCall
from portattn.backends.cuda_source import LOG2E, NVRTC_OPTIONS, Launch, inline_headers, rows_aligned
from portattn.backends.cuda_source import bsh as _bsh

__all__ = ["LOG2E", "NVRTC_OPTIONS", "Launch", "rows_aligned"]  # re-exported: the launch and tests use them

CSRC = Path(__file__).with_name("csrc")
SOURCES = ("common.cuh", "flash_fwd.cuh", "flash_bwd.cuh")  # in include order
CPP_TYPES = {torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}
SMEM_SLACK = 256  # common.cuh: the kernels align their shared memory to 256 bytes


class FwdConfig(NamedTuple):
    head_dim: int  # the kernel's tile width, 64 or 128: smaller head dims are zero-filled up to it
    block_m: int  # query rows per thread block of 4 warps: a multiple of 64
    block_n: int  # keys per K/V tile

    @property
    def threads(self) -> int:
        return 128

    @property
    def smem_bytes(self) -> int:
        """Q, then two K and two V buffers, 16-bit (and SMEM_SLACK to align them)."""
        return (self.block_m + 4 * self.block_n) * self.head_dim * 2 + SMEM_SLACK


@functools.cache  # read once per process, not once per template instance
def source() -> str:
    """The kernels as one translation unit with the headers inlined."""
    return inline_headers(CSRC, SOURCES)


def tile_width(head_dim: int) -> int:
    """The kernels' tile width, 64 or 128: smaller head dims are zero-filled up to it."""
    return 64 if head_dim <= 64 else 128


CONFIG_ENV = "PORTATTN_CUDA_AMPERE_FWD"  # "block_m,block_n": overrides the table, for tuning


def fwd_config(head_dim: int) -> FwdConfig:
    """128-row blocks (32 rows per warp: each K/V fragment feeds two MMAs), 128-key tiles at d<=64 and 64-key
    tiles at d=128: measured on an H100 (benchmarks/RESULTS.md) 0.97-1.01x and 0.91-0.98x FA2, against
    0.87-0.92x and 0.79-0.89x for 64- and 32-key tiles, though ptxas (sm_90) spills 64-80 bytes for them."""
    width = tile_width(head_dim)
    forced = os.environ.get(CONFIG_ENV)
    if forced:
        block_m, block_n = (int(x) for x in forced.split(","))
        return FwdConfig(width, block_m, block_n)
    return FwdConfig(width, 128, 128 if width == 64 else 64)


def kernel_name(kernel: str, dtype: torch.dtype, head_dim: int, block_m: int, block_n: int, flags: tuple) -> str:
    """A template instance as C++ (CuPy's ``name_expressions``); ``flags``: has_lo, has_hi, has_softcap."""
    bools = ", ".join("true" if f else "false" for f in flags)
    return f"portattn::{kernel}<{CPP_TYPES[dtype]}, {head_dim}, {block_m}, {block_n}, {bools}>"


def fwd_name(dtype: torch.dtype, cfg: FwdConfig, has_lo: bool, has_hi: bool, has_softcap: bool) -> str:
    return kernel_name("flash_fwd", dtype, cfg.head_dim, cfg.block_m, cfg.block_n, (has_lo, has_hi, has_softcap))


class BwdConfig(NamedTuple):
    head_dim: int  # tile width, as the forward's
    dkdv_block_m: int  # queries per step of the dK/dV kernel (its blocks hold 64 keys, 4 warps)
    dq_block_n: int  # keys per step of the dQ kernel (its blocks hold 64 queries)
    fused_block_m: int  # queries per step of the one-kernel backward (blocks of 128 keys, 8 warps)
    fused_warps: int = 8


def dkdv_name(dtype: torch.dtype, cfg: BwdConfig, flags: tuple) -> str:
    return kernel_name("flash_bwd_dkdv", dtype, cfg.head_dim, cfg.dkdv_block_m, 4, (False, *flags))


def fused_name(dtype: torch.dtype, cfg: BwdConfig, flags: tuple) -> str:
    return kernel_name("flash_bwd_dkdv", dtype, cfg.head_dim, cfg.fused_block_m, cfg.fused_warps, (True, *flags))


def dq_name(dtype: torch.dtype, cfg: BwdConfig, flags: tuple) -> str:
    return kernel_name("flash_bwd_dq", dtype, cfg.head_dim, 64, cfg.dq_block_n, flags)


def all_instances() -> list[str]:
    """Every template instance a launch can ask for (the compile test builds them all)."""
    names = []
    for dtype, width, flags in itertools.product(CPP_TYPES, (64, 128), itertools.product((False, True), repeat=3)):
        bwd = bwd_config(width)
        names += [fwd_name(dtype, fwd_config(width), *flags), dkdv_name(dtype, bwd, flags), dq_name(dtype, bwd, flags),
                  fused_name(dtype, bwd, flags)]  # fmt: skip
    names += [delta_name(dtype, width) for dtype, width in itertools.product(CPP_TYPES, (64, 128))]
    return names


def delta_name(dtype: torch.dtype, width: int) -> str:
    return f"portattn::flash_bwd_delta<{CPP_TYPES[dtype]}, {width}>"


def delta_launch(call: AttentionCall, out, dout, lse, delta, lse2, dq_zero) -> Launch:
    """rowsum(dout * out) into ``delta`` and ``lse`` in base 2 into ``lse2``, float32 ``(batch, heads_q,
    seqlen_q)`` like ``lse``; ``dq_zero`` (float32, like q, or None) zeroed on the way. Blocks of 64 queries
    of one (batch, head)."""
    width = tile_width(max(call.head_dim, call.head_dim_v))
    dq_ptr, dq_strides = (0, (0, 0, 0)) if dq_zero is None else (dq_zero.data_ptr(), _bsh(dq_zero))
    return Launch(
        delta_name(out.dtype, width), (math.ceil(call.seqlen_q / 64), call.batch * call.heads_q), 256, 0,
        (out.data_ptr(), dout.data_ptr(), lse.data_ptr(), delta.data_ptr(), lse2.data_ptr(), dq_ptr, *_bsh(out),
         *_bsh(dout), *dq_strides,
         np.int32(call.seqlen_q), np.int32(call.heads_q), np.int32(call.head_dim), np.int32(call.head_dim_v)),
    )  # fmt: skip


BWD_ENV = "PORTATTN_CUDA_AMPERE_BWD"  # "block_m": the one-kernel backward's query step, for tuning


def bwd_config(head_dim: int) -> BwdConfig:
    """At d=128 the dK/dV kernels hold dK and dV (128 registers): the two-kernel backward steps by 32 queries
    (no spills); the one-kernel backward by 64 (ptxas, sm_90: 52 bytes spilled), measured faster on an H100
    than 32-query steps (0.77-0.80x FA2 fwd+bwd against 0.74-0.77x, before the backward's K/V fragments
    in registers and straight-line atomics took it to 0.81-0.84x)."""
    width = tile_width(head_dim)
    fused_block_m = int(os.environ.get(BWD_ENV) or 64)
    return BwdConfig(width, 32 if width == 128 else 64, 64, fused_block_m)


DQ_ENV = "PORTATTN_CUDA_AMPERE_DQ"  # "separate": the deterministic two-kernel backward even when not asked


def dq_by_atomics() -> bool:
    """The one-kernel backward (dQ added in float32 by atomics: its sums' order varies from run to run)
    unless torch asks for deterministic algorithms, or the environment for the two-kernel one."""
    return os.environ.get(DQ_ENV, "") != "separate" and not torch.are_deterministic_algorithms_enabled()


def _scalars(call: AttentionCall) -> tuple:
    """seqlen_q, seqlen_k, group, dim, dim_v, band_lo, band_hi and the softmax's three floats, as every
    kernel takes them, except that the caller puts the kernel's head count between seqlen_k and group."""
    lo, hi = call.band
    softcap = call.softcap or 1.0
    return (
        np.int32(call.seqlen_q), np.int32(call.seqlen_k), np.int32(call.group_size),
        np.int32(call.head_dim), np.int32(call.head_dim_v),
        np.int32(lo if lo is not None else 0), np.int32(hi if hi is not None else 0),
        np.float32(call.scale * LOG2E), np.float32(softcap * LOG2E), np.float32(call.scale / softcap),
    )  # fmt: skip


def _flags(call: AttentionCall) -> tuple[bool, bool, bool]:
    lo, hi = call.band
    return lo is not None, hi is not None, call.softcap is not None


def fwd_launch(call: AttentionCall, q, k, v, out, lse) -> Launch:
    """Everything the forward launch needs; tensors are ``rows_aligned`` already. Pointers and strides
    go as Python ints (``long long``), the rest as 32-bit NumPy scalars, in the kernel's order."""
    cfg = fwd_config(max(call.head_dim, call.head_dim_v))
    sq, sk, group, *rest = _scalars(call)
    args = (
        q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(),
        *_bsh(q), *_bsh(k), *_bsh(v), *_bsh(out), sq, sk, np.int32(call.heads_q), group, *rest,
    )  # fmt: skip
    name = fwd_name(q.dtype, cfg, *_flags(call))
    grid = (math.ceil(call.seqlen_q / cfg.block_m), call.batch * call.heads_q)
    return Launch(name, grid, cfg.threads, cfg.smem_bytes, args)


def bwd_launches(call: AttentionCall, q, k, v, dout, lse2, delta, dq, dk, dv) -> tuple[Launch, ...]:
    """``lse2`` and ``delta`` float32 ``(batch, heads_q, seqlen_q)``: the forward's lse in base 2 (+inf where
    a query sees nothing) and rowsum(dout * out), as ``delta_launch`` writes them. With ``dq`` in float32 (zeros,
    contiguous): the one-kernel backward, which adds the scaled dQ into it. Otherwise the dK/dV launch
    (blocks of 64 keys) and the dQ launch (blocks of 64 queries), deterministic."""
    cfg = bwd_config(max(call.head_dim, call.head_dim_v))
    sq, sk, group, *rest = _scalars(call)
    scale = np.float32(call.scale)
    pointers = (q.data_ptr(), k.data_ptr(), v.data_ptr(), dout.data_ptr(), lse2.data_ptr(), delta.data_ptr())
    strides = (*_bsh(q), *_bsh(k), *_bsh(v), *_bsh(dout))
    kv_grid_args = (sq, sk, np.int32(call.heads_kv), group, *rest, scale)

    def smem(block_n: int, block_m: int, ds: bool) -> int:
        """K, V, then two Q, dO buffers and two lse, delta buffers, and dS^T if staged."""
        tiles = (2 * block_n + 4 * block_m + ds * block_n * block_m // cfg.head_dim) * cfg.head_dim * 2
        return tiles + 16 * block_m + SMEM_SLACK

    if dq.dtype == torch.float32:
        block_n = 16 * cfg.fused_warps
        fused = Launch(
            fused_name(q.dtype, cfg, _flags(call)),
            (math.ceil(call.seqlen_k / block_n), call.batch * call.heads_kv), 32 * cfg.fused_warps,
            smem(block_n, cfg.fused_block_m, True),
            (*pointers, dk.data_ptr(), dv.data_ptr(), dq.data_ptr(), *strides, *_bsh(dk), *_bsh(dv), *_bsh(dq),
             *kv_grid_args),
        )  # fmt: skip
        return (fused,)
    dkdv = Launch(
        dkdv_name(q.dtype, cfg, _flags(call)),
        (math.ceil(call.seqlen_k / 64), call.batch * call.heads_kv), 128, smem(64, cfg.dkdv_block_m, False),
        (*pointers, dk.data_ptr(), dv.data_ptr(), 0, *strides, *_bsh(dk), *_bsh(dv), 0, 0, 0, *kv_grid_args),
    )  # fmt: skip
    dq_launch = Launch(
        dq_name(q.dtype, cfg, _flags(call)),
        (math.ceil(call.seqlen_q / 64), call.batch * call.heads_q), 128,
        (2 * 64 + 4 * cfg.dq_block_n) * cfg.head_dim * 2 + SMEM_SLACK,  # Q, dO, then two K and two V buffers
        (*pointers, dq.data_ptr(), *strides, *_bsh(dq), sq, sk, np.int32(call.heads_q), group, *rest, scale),
    )  # fmt: skip
    return dkdv, dq_launch
