"""Default tolerances by dtype, for unit-normal inputs compared with the float64 reference.

``|actual - expected| <= atol + rtol * |expected|`` elementwise. Gradients scale ``atol`` by the
largest reference magnitude (gradients grow with sequence length). A backend may override a dtype
with its ``tolerances`` / ``grad_tolerances`` class attributes.
"""

from __future__ import annotations

import torch

FORWARD: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
BACKWARD: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (5e-4, 5e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (6e-2, 6e-2),
}
# lse is float32 whatever the input dtype; products of fp16/bf16 inputs are exact in fp32.
LSE: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-3, 1e-3),
    torch.bfloat16: (2e-3, 1e-3),
}


def forward(dtype: torch.dtype, backend: object | None = None) -> tuple[float, float]:
    return getattr(backend, "tolerances", {}).get(dtype, FORWARD[dtype])


def backward(dtype: torch.dtype, backend: object | None = None) -> tuple[float, float]:
    return getattr(backend, "grad_tolerances", {}).get(dtype, BACKWARD[dtype])
