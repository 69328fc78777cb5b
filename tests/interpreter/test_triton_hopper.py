"""``triton_hopper`` under ``TRITON_INTERPRET=1`` (set by ``make test``) on CPU tensors.

The in-kernel-descriptor (TMA), host-descriptor and pointer paths, forward and gradients vs the float64 reference. The
same kernels run for real in tests/test_gpu.py."""

from __future__ import annotations

import pytest
import torch

import portattn
from portattn.testing import default_cases, run_case

pytest.importorskip("triton", reason="triton is not installed (pip install 'portattn[triton]')")

CASES = default_cases("quick")
# (case index, dtype): every case of the battery once, dtypes rotating; the sparsity cases are
# refused with a reason until the sparse issue lands (checked below).
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
MATRIX = [(i, DTYPES[i % 3]) for i in range(len(CASES))]


@pytest.fixture(autouse=True)
def interpreter(fresh_registry):
    """Built-ins only, probed afresh (the interpreter makes triton_hopper available on the CPU)."""


@pytest.mark.parametrize("path", ["tma", "host", "pointer"])
@pytest.mark.parametrize("index,dtype", MATRIX, ids=[f"{CASES[i].name}-{str(d)[6:]}" for i, d in MATRIX])
def test_conformance_under_interpreter(monkeypatch, path, index, dtype):
    monkeypatch.setenv("PORTATTN_TRITON_TMA", {"tma": "1", "host": "host", "pointer": "0"}[path])
    case = CASES[index]
    result = run_case("triton_hopper", case, dtype=dtype, seed=index)
    if "sparsity" in case.tags:
        assert result.status == "unsupported" and "sparsity 'dense_mask' not supported" in result.message
        return
    result.raise_for_failure()
    assert result.status == "pass", result.message
    assert {"out", "lse", "dq", "dk", "dv"} <= set(result.errors)


def test_dispatch_picks_triton_under_interpreter():
    q, k, v = torch.randn(1, 5, 2, 16), torch.randn(1, 5, 2, 16), torch.randn(1, 5, 2, 16)
    assert portattn.explain(q, k, v, quiet=True).chosen == "triton_hopper"
    out = portattn.attention(q, k, v, causal=True)
    torch.testing.assert_close(out, portattn.attention(q, k, v, causal=True, backend="reference"))


def test_reasons_for_what_it_cannot_serve():
    q = torch.randn(1, 5, 2, 320)
    with pytest.raises(portattn.NoBackendError, match="head_dim 320 larger than the supported maximum 256"):
        portattn.attention(q, q, q, backend="triton_hopper")


def test_torch_compile_traces_through_without_graph_breaks():
    q, k, v = (torch.randn(1, 21, 2, 16, requires_grad=True) for _ in range(3))

    def block(q, k, v):
        return portattn.attention(q, k, v, causal=True, backend="triton_hopper") * 3

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    out, expected = compiled(q, k, v), block(q, k, v)
    torch.testing.assert_close(out, expected)
    for a, b in zip(
        torch.autograd.grad(out.sum(), (q, k, v)), torch.autograd.grad(expected.sum(), (q, k, v)), strict=True
    ):
        torch.testing.assert_close(a, b)


DENSE = [(i, d) for i, d in MATRIX if "sparsity" not in CASES[i].tags]  # sparsity: refused, checked above


@pytest.mark.parametrize("index,dtype", DENSE, ids=[f"{CASES[i].name}-{str(d)[6:]}" for i, d in DENSE])
def test_atomic_dq_under_interpreter(monkeypatch, index, dtype):
    """PORTATTN_TRITON_DQ=atomic: dQ added by atomics inside the dK/dV kernel (host-descriptor path)."""
    monkeypatch.setenv("PORTATTN_TRITON_TMA", "host")
    monkeypatch.setenv("PORTATTN_TRITON_DQ", "atomic")
    result = run_case("triton_hopper", CASES[index], dtype=dtype, seed=index + 100)
    result.raise_for_failure()
    assert result.status == "pass", result.message
    assert "dq" in result.errors


def test_atomic_dq_yields_to_deterministic_algorithms(monkeypatch):
    from portattn.backends.triton_hopper import launch

    monkeypatch.setenv("PORTATTN_TRITON_DQ", "atomic")
    assert launch._atomic_dq()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert not launch._atomic_dq()
    finally:
        torch.use_deterministic_algorithms(previous)
    monkeypatch.delenv("PORTATTN_TRITON_DQ")
    assert not launch._atomic_dq()


@pytest.mark.parametrize("window,causal", [((3, 2**31 - 8), False), ((2**31 - 8, 0), True), ((-1, 2**31 - 1), False)])
def test_window_past_int32_under_interpreter(window, causal):
    """Bounds near 2**31 would wrap where a kernel adds them to a row; the band is clipped first."""
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, n, 2, 16, generator=g) for n in (19, 23, 23))
    out = portattn.attention(q, k, v, causal=causal, window=window, backend="triton_hopper")
    expected = portattn.attention(q, k, v, causal=causal, window=window, backend="reference")
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=2e-3)
