"""Lazy, cached device probes (nothing is probed at import)."""

from __future__ import annotations

import functools

import torch


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """``(major, minor)`` of a CUDA device."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability(index)


def describe_devices() -> list[dict[str, object]]:
    """Every device torch sees: CPU, CUDA (with compute capability) and NPU."""
    devices: list[dict[str, object]] = [{"device": "cpu", "name": "cpu"}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = _capability(i)
            devices.append(
                {"device": f"cuda:{i}", "name": torch.cuda.get_device_name(i), "compute_capability": f"{major}.{minor}"}
            )
    npu = getattr(torch, "npu", None)  # present only when torch_npu was imported by someone
    if npu is not None and npu.is_available():
        for i in range(npu.device_count()):
            devices.append({"device": f"npu:{i}", "name": npu.get_device_name(i)})
    return devices
