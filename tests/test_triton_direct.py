"""The direct-launch helpers of ``triton_hopper`` on the CPU: descriptor templates (the GPU test
``test_direct_launch_repeated_calls_on_gpu`` covers the launches)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

pytest.importorskip("triton")


def test_host_descriptor_template_is_reused_and_holds_no_tensor():
    from portattn.backends.triton_hopper import launch

    first = torch.randn(2, 40, 3, 64, dtype=torch.bfloat16)
    alive = weakref.ref(first)
    d1 = launch._operands(launch.HOST_TMA, (first, 64, 64))[0]
    assert d1.base is first and list(d1.shape) == [2, 40, 3, 64] and list(d1.block_shape) == [1, 64, 1, 64]
    del d1, first
    gc.collect()
    assert alive() is None, "the cached template keeps the first call's tensor alive"
    second = torch.randn(2, 40, 3, 64, dtype=torch.bfloat16)
    d2 = launch._operands(launch.HOST_TMA, (second, 64, 64))[0]
    assert d2.base is second and list(d2.strides) == list(second.stride())
    other = torch.randn(2, 40, 3, 128, dtype=torch.bfloat16)[..., :64]  # same shape, other strides
    d3 = launch._operands(launch.HOST_TMA, (other, 64, 64))[0]
    assert list(d3.strides) == list(other.stride()) and d3.base is other


def test_rebased_copies_fields_and_leaves_the_template():
    from triton.tools.tensor_descriptor import TensorDescriptor

    from portattn.backends.triton_hopper import direct

    a, b = torch.randn(4, 32), torch.randn(4, 32)
    template = TensorDescriptor(a, [4, 32], [32, 1], [4, 16])
    copy = direct.rebased(template, b)
    assert copy.base is b and template.base is a
    assert (copy.shape, copy.strides, copy.block_shape, copy.padding) == (
        template.shape, template.strides, template.block_shape, template.padding,
    )  # fmt: skip
    assert type(copy) is TensorDescriptor


def test_direct_launch_is_allowed_with_triton_default_hooks(monkeypatch):
    """Triton 3.6+ keeps empty hook chains, not None: those must not turn the direct launch off; a
    registered hook (a profiler) must; so must the environment switch."""
    from triton import knobs

    from portattn.backends.triton_hopper import direct, kernels

    assert direct._allowed(kernels.attn_fwd)
    monkeypatch.setenv(direct.DIRECT_ENV, "0")
    assert not direct._allowed(kernels.attn_fwd)
    monkeypatch.delenv(direct.DIRECT_ENV)
    hook = knobs.runtime.launch_enter_hook
    if hasattr(hook, "add"):
        hook.add(print)
        try:
            assert not direct._allowed(kernels.attn_fwd)
        finally:
            hook.remove(print)
    else:
        monkeypatch.setattr(knobs.runtime, "launch_enter_hook", print)
        assert not direct._allowed(kernels.attn_fwd)
    assert direct._allowed(kernels.attn_fwd)
