"""``cuda_volta``: a FlashAttention-2 forward with Volta's instructions only (sm70: WMMA m16n16k16 in
fp16, plain loads), compiled at run time through CuPy (NVRTC). Chosen on sm70-sm75, where neither
``triton_hopper`` nor ``cuda_ampere`` runs; on newer GPUs it ranks below them.

This module holds the capabilities and checks, and reads the GPU's WMMA element order once per device
(the probe); cupy is imported when the backend first runs.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

import torch

from portattn import _call
from portattn._backend import Backend, Capabilities
from portattn.backends.cuda_source import cupy_unavailable_reason

if TYPE_CHECKING:
    from portattn._call import AttentionCall

SOFTMAX_ENV = "PORTATTN_CUDA_VOLTA_SOFTMAX"  # "shared": the shared-memory softmax even where registers would do
HEAD_DIMS = (64, 128)  # the kernel's tile widths; smaller head dims are zero-padded to 64 in shared memory


@functools.cache
def read_wmma_order(device_index: int):
    """This GPU's WMMA element order (``wmma_order.WmmaOrder``), read by the probe kernel once per device."""
    from portattn.backends import cupy_launch
    from portattn.backends.cuda_volta import plan, wmma_order

    device = torch.device("cuda", device_index)
    source = plan.source() + wmma_order.PROBE

    def run(launch, *_tensors):
        cupy_launch.run(source, plan.NVRTC_OPTIONS, launch, device=device)

    return wmma_order.read(run, device)


@functools.cache
def register_softmax_facts(device_index: int):
    """What the forward's register softmax needs of this GPU's WMMA element order; None where the
    order does not allow it (``wmma_order.register_softmax``). Checked once per device."""
    from portattn.backends.cuda_volta import wmma_order

    return wmma_order.register_softmax(read_wmma_order(device_index))


class CudaVoltaBackend(Backend):
    """WMMA m16n16k16 (fp16, fp32 accumulation); the forward's softmax in registers where the GPU's
    element order allows it (checked by a probe), else through shared memory; fwd and bwd."""

    name = "cuda_volta"
    priority = 200  # below cuda_ampere (250) and triton_hopper (300), which need sm80
    description = "CUDA FlashAttention-2 with sm70 instructions only (WMMA), compiled through CuPy/NVRTC; fwd and bwd"
    capabilities = Capabilities(
        devices=frozenset({"cuda"}),
        compute_capability=((7, 0), None),
        dtypes=frozenset({torch.float16}),  # Volta has no bf16; fp32 inputs would lose precision in fp16 MMAs
        max_head_dim=max(HEAD_DIMS),
        features=frozenset({_call.CAUSAL, _call.WINDOW, _call.GQA, _call.LSE, _call.BACKWARD, _call.KV_OFFLOAD}),
    )

    def available(self) -> str | None:
        return cupy_unavailable_reason()

    def extra_reasons(self, call: AttentionCall) -> list[str]:
        if call.head_dim % 8:
            return [f"head_dim must be a multiple of 8 (16-byte loads), got {call.head_dim}"]
        return []

    def forward(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        from portattn.backends import cupy_launch  # imports cupy
        from portattn.backends.cuda_volta import plan

        facts = None if os.environ.get(SOFTMAX_ENV) == "shared" else register_softmax_facts(q.device.index)
        fwd = functools.partial(plan.fwd_launch, register_softmax=facts is not None)
        return cupy_launch.forward(plan.source(facts), plan.NVRTC_OPTIONS, fwd, call, q, k, v)

    def backward(self, call, q, k, v, out, lse, dout, dlse=None):
        from portattn.backends import cupy_launch
        from portattn.backends.cuda_volta import plan

        return cupy_launch.backward(plan.source(), plan.NVRTC_OPTIONS, plan.bwd_launches, call, q, k, v, out, lse, dout)
