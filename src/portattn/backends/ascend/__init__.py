"""``ascend``: Huawei Ascend NPUs through ``torch_npu``. Built to be right on hardware this project
cannot run: no NPU is available here, and torch-npu must not be installed without CANN (it breaks
``import torch``). Its algorithmic parts run on the CPU in CI: the argument mapping onto
``npu_fusion_attention`` (against an emulation of that op from its documented semantics), the
two-level tiling path, and the tiling-AllReduce (``portattn.distributed``).

Two paths, chosen per call (the same for forward and backward):

- fused: ``torch_npu.npu_fusion_attention`` for what it expresses (``fused.plan``): full, causal
  top-left/bottom-right and band masks through its compressed 2048x2048 mask (the tiling-mask), dense
  masks, bias, GQA, lse from its softmax statistics; backward through the op's autograd.
- two-level tiling (``tiling``) for the rest (softcap, block-sparse patterns, ...), in torch ops.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import torch

from portattn import _call
from portattn._backend import Backend, Capabilities

if TYPE_CHECKING:
    from portattn._call import AttentionCall


class AscendBackend(Backend):
    """``npu_fusion_attention`` where it can express the call, two-level tiling elsewhere."""

    name = "ascend"
    priority = 300
    description = (
        "npu_fusion_attention + two-level tiling. NEVER RUN ON AN NPU (this project has none): its op mapping "
        "(vs an emulation), tiling path and tiling-AllReduce are tested on the CPU"
    )
    capabilities = Capabilities(
        devices=frozenset({"npu"}),
        features=frozenset(
            {
                _call.CAUSAL,
                _call.WINDOW,
                _call.SOFTCAP,
                _call.GQA,
                _call.LSE,
                _call.BACKWARD,
                _call.BIAS,
                _call.HEAD_DIM_V,
            }
        ),  # fmt: skip
        sparsity=None,  # the tiling path takes every pattern's tile masks
    )

    def available(self) -> str | None:
        if importlib.util.find_spec("torch_npu") is None:
            return (
                "torch-npu is not installed (it needs Huawei's CANN toolkit first; then pip install 'portattn[ascend]')"
            )
        try:
            import torch_npu  # noqa: F401
        except Exception as exc:  # without CANN: libhccl.so / libascend_hal.so missing, ...
            return (
                f"torch_npu failed to import ({type(exc).__name__}: {exc}); is CANN installed and "
                "`source <CANN>/set_env.sh` done?"
            )
        npu = getattr(torch, "npu", None)
        if npu is None or not npu.is_available():
            return "no Ascend NPU device is visible"
        return None

    def fused_op(self) -> Any:
        """The op of the fused path (tests substitute the emulation)."""
        import torch_npu

        return torch_npu.npu_fusion_attention

    def forward(self, call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        from portattn.backends.ascend import fused, tiling

        plan = fused.plan(call)
        if isinstance(plan, str):
            return tiling.forward(call, q, k, v)
        return fused.run(plan, call, q, k, v, self.fused_op())

    def backward(self, call, q, k, v, out, lse, dout, dlse=None):
        from portattn.backends.ascend import fused, tiling

        plan = fused.plan(call)
        if isinstance(plan, str):
            return tiling.backward(call, q, k, v, out, lse, dout, dlse)
        with torch.enable_grad():  # the op's own backward, through autograd
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            out2, _ = fused.run(plan, call, *leaves, self.fused_op())
            return torch.autograd.grad(out2, leaves, dout)
