"""Compiling (CuPy / NVRTC, cached on disk by CuPy) and launching the kernels of the CuPy-compiled
backends on torch's current stream. Imports cupy: loaded when such a backend first runs."""

from __future__ import annotations

import functools

import cupy
import torch

from portattn.backends.cuda_source import Launch


@functools.cache
def compiled(source: str, options: tuple[str, ...], name: str, device_index: int) -> cupy.RawKernel:
    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(code=source, options=options, name_expressions=(name,))
        kernel = module.get_function(name)  # NVRTC runs here, or CuPy's disk cache answers
    return kernel


def run(source: str, options: tuple[str, ...], *launches: Launch, device: torch.device) -> None:
    with cupy.cuda.Device(device.index), cupy.cuda.Stream.from_external(torch.cuda.current_stream(device)):
        for launch in launches:
            kernel = compiled(source, options, launch.name, device.index)
            if kernel.max_dynamic_shared_size_bytes < launch.smem_bytes:  # above 48 KB needs the opt-in
                kernel.max_dynamic_shared_size_bytes = launch.smem_bytes
            kernel(launch.grid, (launch.threads,), launch.args, shared_mem=launch.smem_bytes)
