"""Host-side plan of a ``cuda_ampere`` launch, without cupy (unit-tested on CPU): which template
instance, its tile config, grid, shared memory and argument list, and the source text NVRTC compiles."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from portattn._call import AttentionCall

CSRC = Path(__file__).with_name("csrc")
SOURCES = ("common.cuh", "flash_fwd.cuh")  # in include order
LOG2E = 1.4426950408889634
# exp2f, tanhf and log2f as the hardware's approximations (ex2.approx etc.), as flash-attn compiles
NVRTC_OPTIONS = ("-std=c++17", "--use_fast_math")
CPP_TYPES = {torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}


class FwdConfig(NamedTuple):
    head_dim: int  # the kernel's tile width, 64 or 128: smaller head dims are zero-filled up to it
    block_m: int  # query rows per thread block of 4 warps: a multiple of 64
    block_n: int  # keys per K/V tile

    @property
    def threads(self) -> int:
        return 128

    @property
    def smem_bytes(self) -> int:
        """Q, then two K and two V buffers, 16-bit."""
        return (self.block_m + 4 * self.block_n) * self.head_dim * 2


def source() -> str:
    """The kernels as one translation unit with the headers inlined: CuPy's disk cache keys on this
    text, so an edit to any header compiles afresh."""
    parts = []
    for name in SOURCES:
        lines = (CSRC / name).read_text().splitlines()
        parts.append("\n".join(line for line in lines if not line.startswith(('#include "', "#pragma once"))))
    return "\n".join(parts)


CONFIG_ENV = "PORTATTN_CUDA_AMPERE_FWD"  # "block_m,block_n": overrides the table, for tuning


def fwd_config(head_dim: int) -> FwdConfig:
    """128-row blocks (32 rows per warp: each K/V fragment feeds two MMAs); at d=128 32-key tiles keep
    S small enough for the registers (ptxas, sm_80: 255 registers, 20 bytes spilled; 64-key tiles
    spill 220 bytes)."""
    width = 64 if head_dim <= 64 else 128
    forced = os.environ.get(CONFIG_ENV)
    if forced:
        block_m, block_n = (int(x) for x in forced.split(","))
        return FwdConfig(width, block_m, block_n)
    return FwdConfig(width, 128, 64 if width == 64 else 32)


def fwd_name(dtype: torch.dtype, cfg: FwdConfig, has_lo: bool, has_hi: bool, has_softcap: bool) -> str:
    """The template instance as C++ (CuPy's ``name_expressions``)."""
    flags = ", ".join("true" if f else "false" for f in (has_lo, has_hi, has_softcap))
    return f"portattn::flash_fwd<{CPP_TYPES[dtype]}, {cfg.head_dim}, {cfg.block_m}, {cfg.block_n}, {flags}>"


def rows_aligned(t: torch.Tensor) -> torch.Tensor:
    """cp.async moves 16-byte chunks: the last dim contiguous, the base and every row 16-byte aligned.
    Other layouts are copied once (the kernel could not read them)."""
    size = t.element_size()
    if t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all((s * size) % 16 == 0 for s in t.stride()[:-1]):
        return t
    return t.contiguous()


class FwdLaunch(NamedTuple):
    name: str
    grid: tuple[int, int]
    threads: int
    smem_bytes: int
    args: tuple


def _bsh(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def fwd_launch(call: AttentionCall, q, k, v, out, lse) -> FwdLaunch:
    """Everything the forward launch needs; tensors are ``rows_aligned`` already. Pointers and strides
    go as Python ints (``long long``), the rest as 32-bit NumPy scalars, in the kernel's order."""
    cfg = fwd_config(max(call.head_dim, call.head_dim_v))
    lo, hi = call.band
    softcap = call.softcap or 1.0
    args = (
        q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(),
        *_bsh(q), *_bsh(k), *_bsh(v), *_bsh(out),
        np.int32(call.seqlen_q), np.int32(call.seqlen_k), np.int32(call.heads_q), np.int32(call.group_size),
        np.int32(call.head_dim), np.int32(call.head_dim_v),
        np.int32(lo if lo is not None else 0), np.int32(hi if hi is not None else 0),
        np.float32(call.scale * LOG2E), np.float32(softcap * LOG2E), np.float32(call.scale / softcap),
    )  # fmt: skip
    name = fwd_name(q.dtype, cfg, lo is not None, hi is not None, call.softcap is not None)
    grid = (math.ceil(call.seqlen_q / cfg.block_m), call.batch * call.heads_q)
    return FwdLaunch(name, grid, cfg.threads, cfg.smem_bytes, args)
