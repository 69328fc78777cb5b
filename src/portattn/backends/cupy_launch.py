"""Compiling (NVRTC, cached on disk by ``portattn._kernel_cache``) and launching the kernels of the
CuPy-compiled backends on torch's current stream, and the forward and backward around their launches.
Imports cupy: loaded when such a backend first runs."""

from __future__ import annotations

import collections
import functools
import hashlib
import time
from collections.abc import Callable

import cupy
import torch

from portattn import _kernel_cache
from portattn._call import AttentionCall
from portattn.backends import cuda_source
from portattn.backends.cuda_source import Launch

# what compiled() did in this process: "compiled" (NVRTC ran), "loaded" (from the disk cache), "cupy" (CuPy's
# own compile path, when NVRTC's bindings or the target do not suit the cached one), and the last such reason
events: collections.Counter = collections.Counter()
fallback_reason: list[str] = []


def _nvrtc_binary(source: str, options: tuple[str, ...], name: str, target: str) -> tuple[bytes, str]:
    """NVRTC's cubin of template instance ``name`` for ``target`` (e.g. "sm_90") and its mangled name;
    ``options`` as ``_nvrtc_options`` gives them."""
    from cupy_backends.cuda.libs import nvrtc

    program = nvrtc.createProgram(source, "portattn.cu", (), ())
    try:
        nvrtc.addNameExpression(program, name)
        try:
            nvrtc.compileProgram(program, [*options, f"--gpu-architecture={target}"])
        except nvrtc.NVRTCError as exc:
            raise RuntimeError(f"{exc}: {nvrtc.getProgramLog(program)}") from None
        return nvrtc.getCUBIN(program), nvrtc.getLoweredName(program, name)
    finally:
        nvrtc.destroyProgram(program)


def _nvrtc_options(options: tuple[str, ...]) -> tuple[str, ...]:
    """``options`` with the include paths CuPy gives NVRTC (its bundled CCCL, the CUDA headers of the
    toolkit or of the nvidia-* wheels), which the kernels' <cuda_bf16.h> and <cuda_fp16.h> need."""
    from cupy._core import core

    return tuple(core.assemble_cupy_compiler_options(tuple(options)))


def _toolchain() -> str:
    from cupy_backends.cuda.libs import nvrtc

    return f"cupy {cupy.__version__}, nvrtc {'.'.join(map(str, nvrtc.getVersion()))}"


@functools.cache
def compiled(source: str, options: tuple[str, ...], name: str, device_index: int) -> cupy.RawKernel:
    """Template instance ``name`` for the device: from the disk cache, else compiled by NVRTC and cached.
    Where that path cannot serve (a cache that cannot be written, old bindings, a target NVRTC does not
    know, a compile error), CuPy compiles it; its error names the problem, with NVRTC's log."""
    with cupy.cuda.Device(device_index):
        target = f"sm_{cupy.cuda.Device(device_index).compute_capability}"  # CuPy's "90" for sm90
        try:
            return _cached(source, options, name, target)
        except Exception as exc:  # noqa: BLE001 (any failure of the cached path falls back to CuPy's)
            fallback_reason[:] = [f"{type(exc).__name__}: {exc}"[:2000]]
        module = cupy.RawModule(code=source, options=options, name_expressions=(name,))
        kernel = module.get_function(name)  # NVRTC runs here (CuPy's disk cache is not read for these)
        events["cupy"] += 1
        return kernel


def _cached(source: str, options: tuple[str, ...], name: str, target: str) -> cupy.RawKernel:
    toolchain, options = _toolchain(), _nvrtc_options(options)
    cache_key = _kernel_cache.key(source, options, name, target, toolchain)
    hit = _kernel_cache.lookup(cache_key)
    if hit is not None:
        path, entry = hit
        kernel = cupy.RawModule(path=str(path)).get_function(entry.symbol)
        events["loaded"] += 1
        return kernel
    if not _kernel_cache.writable():
        raise OSError(f"the kernel cache {_kernel_cache.cache_dir()} cannot be written")
    start = time.perf_counter()
    binary, symbol = _nvrtc_binary(source, options, name, target)
    entry = _kernel_cache.Entry(name, symbol, target, time.perf_counter() - start, toolchain,
                                hashlib.sha256(binary).hexdigest())  # fmt: skip
    path = _kernel_cache.store(cache_key, binary, entry)
    if path is None:
        raise OSError(f"the kernel cache {_kernel_cache.cache_dir()} cannot be written")
    kernel = cupy.RawModule(path=str(path)).get_function(symbol)
    events["compiled"] += 1
    return kernel


def run(source: str, options: tuple[str, ...], *launches: Launch, device: torch.device) -> None:
    with cupy.cuda.Device(device.index), cupy.cuda.Stream.from_external(torch.cuda.current_stream(device)):
        for launch in launches:
            kernel = compiled(source, options, launch.name, device.index)
            if kernel.max_dynamic_shared_size_bytes < launch.smem_bytes:  # above 48 KB needs the opt-in
                kernel.max_dynamic_shared_size_bytes = launch.smem_bytes
            kernel(launch.grid, (launch.threads,), launch.args, shared_mem=launch.smem_bytes)


def forward(source: str, options: tuple[str, ...], fwd_launch: Callable, call: AttentionCall, q, k, v):
    """A backend's forward on the GPU (``cuda_source.forward`` with this module's launcher)."""
    return cuda_source.forward(functools.partial(run, source, options, device=q.device), fwd_launch, call, q, k, v)


def backward(source: str, options: tuple[str, ...], bwd_launches: Callable, call: AttentionCall, q, k, v, out, lse,
             dout, *, dq_float32: bool = False, delta_launch: Callable | None = None):  # fmt: skip
    """A backend's FlashAttention-2 backward on the GPU (``cuda_source.backward`` with this module's
    launcher)."""
    launcher = functools.partial(run, source, options, device=q.device)
    return cuda_source.backward(launcher, bwd_launches, call, q, k, v, out, lse, dout, dq_float32=dq_float32,
                                delta_launch=delta_launch)  # fmt: skip
