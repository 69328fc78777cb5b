"""``triton_hopper``: FlashAttention-2 in Triton, TMA tensor descriptors on sm90+, forward and backward.

This module holds the capabilities and checks only; triton is imported when the backend first runs.
Under ``TRITON_INTERPRET=1`` the same kernels run on any device (CPU tensors in CI).
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

import torch

from portattn import _call
from portattn._backend import ALL_DTYPES, Backend, Capabilities
from portattn._device import cuda_capability

if TYPE_CHECKING:
    from portattn._call import AttentionCall


# On an H100 the pointer path made an illegal memory access at head_dim 40 / head_dim_v 24, while
# the same kernels are exact under the interpreter at the GPU's tile sizes and the descriptor path
# passes on the GPU. Until that is understood, head_dim_v != head_dim runs only on the TMA path.
POINTER_PATH_HEAD_DIM_V = (
    "head_dim_v != head_dim needs the TMA path (sm90+): on an H100 the pointer-path forward read shared "
    "memory out of bounds at head_dim 40 / head_dim_v 24 (Triton 3.6 code generation, see RESULTS.md)"
)
FP8_NO_BACKWARD = "precision='fp8' is forward-only (no backward kernel); inputs that require grad need a 16-bit backend"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


SM8X_PRIORITY = 240  # between cuda_ampere (250) and cuda_volta (200)


class TritonHopperBackend(Backend):
    """Triton kernels: online softmax, band-aware block skipping, GQA without repeated K/V."""

    name = "triton_hopper"
    priority = 300
    description = "Triton FlashAttention-2: TMA tensor descriptors + software pipelining on sm90, pointer path on sm80"
    capabilities = Capabilities(
        devices=frozenset({"cuda"}),
        compute_capability=((8, 0), None),
        dtypes=ALL_DTYPES | {_call.FP8_DTYPE},  # float8: pre-quantized inputs with descales (precision="fp8")
        max_head_dim=256,
        features=frozenset(
            {
                _call.CAUSAL,
                _call.WINDOW,
                _call.SOFTCAP,
                _call.GQA,
                _call.LSE,
                _call.BACKWARD,
                _call.LSE_BACKWARD,
                _call.HEAD_DIM_V,
                _call.FP8,
                _call.KV_OFFLOAD,  # the core streams host K/V through the forward (portattn/_offload.py)
            }
        ),  # fmt: skip
        # static block patterns, the same for every batch and head: the kernels skip their empty tiles;
        # "interval": what qk_drop and hash_buckets compact to (portattn/_dynamic.py)
        sparsity=frozenset(
            {"sliding_window", "global_tokens", "random_blocks", "bigbird", "union", "intersection", "interval"}
        ),
    )
    # Under the interpreter the kernels run on whatever device holds the tensors.
    interpreter_capabilities = dataclasses.replace(capabilities, devices=None, compute_capability=None)

    def available(self) -> str | None:
        if not _interpreting() and not torch.cuda.is_available():  # decided without importing triton
            return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU, slowly, for tests)"
        try:
            import triton  # noqa: F401
        except Exception as exc:  # missing, or broken against this torch
            return f"triton is not importable ({type(exc).__name__}: {exc}); pip install 'portattn[triton]'"
        return None

    def active_capabilities(self) -> Capabilities:
        return self.interpreter_capabilities if _interpreting() else self.capabilities

    def priority_for(self, call: AttentionCall) -> int:
        """Below ``cuda_ampere`` (250) on sm80-sm89, where only the generic pointer path runs and the CUDA
        kernel made for those GPUs is preferred; it stays their fallback for what that kernel cannot serve."""
        if not _interpreting() and call.device.type == "cuda" and cuda_capability(call.device) < (9, 0):
            return SM8X_PRIORITY
        return self.priority

    def extra_reasons(self, call: AttentionCall) -> list[str]:
        if call.sparsity is not None:
            reasons = []
            if _call.FP8 in call.features:
                reasons.append("precision='fp8' takes no sparsity pattern")
            if getattr(call.sparsity, "per_head", False):
                reasons.append("a pattern with a block_mask inside may differ per batch and head: portable serves it")
            if reasons:
                return reasons
        if _call.FP8 in call.features:
            return self._fp8_reasons(call)
        if _interpreting() or call.head_dim == call.head_dim_v:
            return []
        row_bytes = [d * call.dtype.itemsize for d in (call.head_dim, call.head_dim_v)]
        if cuda_capability(call.device) < (9, 0) or any(b % 16 for b in row_bytes):
            return [f"{POINTER_PATH_HEAD_DIM_V}; TMA needs sm90+ and head dims of a multiple of 16 bytes"]
        return []

    def _fp8_reasons(self, call: AttentionCall) -> list[str]:
        reasons = [FP8_NO_BACKWARD] if _call.BACKWARD in call.features else []
        if _interpreting():
            return reasons
        if cuda_capability(call.device) < (9, 0):
            reasons.append("precision='fp8' needs sm90+ (e4m3 tensor cores and TMA)")
        if call.head_dim_v % 8:  # the 16-bit output's rows, through TMA
            reasons.append("precision='fp8' needs head_dim_v to be a multiple of 8 (16-byte output rows for TMA)")
        return reasons

    def forward(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        from portattn.backends.triton_hopper import launch

        if call.precision == "fp8":
            return launch.forward_fp8(call, q, k, v)
        return launch.forward(call, q, k, v)

    def backward(self, call, q, k, v, out, lse, dout, dlse=None):
        from portattn.backends.triton_hopper import launch

        return launch.backward(call, q, k, v, out, lse, dout, dlse)
