"""``cuda_ampere``: a FlashAttention-2 CUDA kernel compiled at run time through CuPy (NVRTC), sm80+.

This module holds the capabilities and checks only; cupy is imported when the backend first runs.
The kernel sources are ``csrc/*.cuh`` (shipped in the package); ``launch`` compiles each template
instance on first use and keeps the binary on disk (``portattn._kernel_cache``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from portattn import _call
from portattn._backend import Backend, Capabilities
from portattn.backends.cuda_source import cupy_unavailable_reason

if TYPE_CHECKING:
    from portattn._call import AttentionCall

HEAD_DIMS = (64, 128)  # the kernel's tile widths; smaller head dims are zero-padded to 64 in shared memory


class CudaAmpereBackend(Backend):
    """mma.sync m16n8k16 + ldmatrix + cp.async double buffering, split-Q over warps."""

    name = "cuda_ampere"
    priority = 250  # below triton_hopper (300) on sm90+; above its pointer path (240) on sm80-sm89
    description = "CUDA FlashAttention-2 compiled through CuPy/NVRTC: mma.sync, ldmatrix, cp.async; fwd and bwd"
    capabilities = Capabilities(
        devices=frozenset({"cuda"}),
        compute_capability=((8, 0), None),
        dtypes=frozenset({torch.float16, torch.bfloat16}),
        max_head_dim=max(HEAD_DIMS),
        features=frozenset(
            {_call.CAUSAL, _call.WINDOW, _call.SOFTCAP, _call.GQA, _call.LSE, _call.HEAD_DIM_V, _call.BACKWARD}
        ),
    )

    def available(self) -> str | None:
        return cupy_unavailable_reason()

    def extra_reasons(self, call: AttentionCall) -> list[str]:
        reasons = []
        for what, dim in (("head_dim", call.head_dim), ("head_dim_v", call.head_dim_v)):
            if dim % 8:
                reasons.append(f"{what} must be a multiple of 8 (16-byte cp.async chunks), got {dim}")
        if max(call.head_dim, call.head_dim_v) > max(HEAD_DIMS):
            reasons.append(f"head dims up to {max(HEAD_DIMS)}")
        return reasons

    def forward(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        from portattn.backends import cupy_launch  # imports cupy
        from portattn.backends.cuda_ampere import plan

        return cupy_launch.forward(plan.source(), plan.NVRTC_OPTIONS, plan.fwd_launch, call, q, k, v)

    def backward(self, call, q, k, v, out, lse, dout, dlse=None):
        from portattn.backends import cupy_launch
        from portattn.backends.cuda_ampere import plan

        return cupy_launch.backward(plan.source(), plan.NVRTC_OPTIONS, plan.bwd_launches, call, q, k, v, out, lse, dout,
                                    dq_float32=plan.dq_by_atomics(), delta_launch=plan.delta_launch)  # fmt: skip
