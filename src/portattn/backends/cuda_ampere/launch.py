"""Compiling and launching the ``cuda_ampere`` kernels (imports cupy; loaded on first use)."""

from __future__ import annotations

import functools
import time

import cupy
import torch

from portattn import _alloc
from portattn._call import AttentionCall
from portattn.backends.cuda_ampere import plan

# seconds each template instance took to compile (or to load from CuPy's disk cache) in this process
COMPILE_SECONDS: dict[str, float] = {}


@functools.cache
def _kernel(name: str, device_index: int) -> cupy.RawKernel:
    start = time.perf_counter()
    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(code=plan.source(), options=plan.NVRTC_OPTIONS, name_expressions=(name,))
        kernel = module.get_function(name)  # NVRTC runs here, or CuPy's disk cache answers
    COMPILE_SECONDS[name] = time.perf_counter() - start
    return kernel


def forward(
    call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (batch, seqlen_q, heads_q, head_dim_v)``, ``lse`` float32 ``(batch, heads_q, seqlen_q)``."""
    q, k, v = (plan.rows_aligned(t) for t in (q, k, v))
    b, sq, hq = call.batch, call.seqlen_q, call.heads_q
    out = _alloc.empty(b, sq, hq, call.head_dim_v, dtype=q.dtype, device=q.device)
    lse = _alloc.empty(b, hq, sq, dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    launch = plan.fwd_launch(call, q, k, v, out, lse)
    kernel = _kernel(launch.name, q.device.index)
    if kernel.max_dynamic_shared_size_bytes < launch.smem_bytes:  # above 48 KB needs the opt-in
        kernel.max_dynamic_shared_size_bytes = launch.smem_bytes
    with cupy.cuda.Device(q.device.index), cupy.cuda.Stream.from_external(torch.cuda.current_stream(q.device)):
        kernel(launch.grid, (launch.threads,), launch.args, shared_mem=launch.smem_bytes)
    return out, lse
