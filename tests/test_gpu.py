"""GPU truth: the kernels on a real device at real sizes (run by scripts/gpu.sh on a lent GPU).

Fresh random inputs, poisoned outputs, gradients; every backend that is available on the device.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import portattn
from portattn.testing import Case, default_cases, run_case

pytestmark = pytest.mark.gpu

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _backends():
    return [r.name for r in portattn.list_backends() if r.available and r.name not in ("reference",)]


# every case in bf16; fp16 and fp32 on a third of them each (compiles dominate the time)
BATTERY = [(c, torch.bfloat16) for c in default_cases("full")]
BATTERY += [(c, DTYPES[1 + i % 2]) for i, c in enumerate(default_cases("full")) if i % 3 == 0]


@pytest.mark.parametrize("case,dtype", BATTERY, ids=[f"{c.name}-{str(d)[6:]}" for c, d in BATTERY])
def test_battery_on_gpu(case, dtype):
    for name in _backends():
        result = run_case(name, case, device="cuda", dtype=dtype)
        result.raise_for_failure()


REAL = [
    Case(batch=2, seqlen_q=1024, seqlen_k=1024, heads_q=16, heads_kv=16, head_dim=128),
    Case(batch=2, seqlen_q=1024, seqlen_k=1024, heads_q=16, heads_kv=16, head_dim=128, causal=True),
    Case(batch=1, seqlen_q=2048, seqlen_k=2048, heads_q=32, heads_kv=8, head_dim=64, causal=True),
    Case(batch=1, seqlen_q=1000, seqlen_k=3001, heads_q=8, heads_kv=2, head_dim=128, causal=True),
    Case(batch=1, seqlen_q=3001, seqlen_k=1000, heads_q=8, heads_kv=8, head_dim=96, causal=True),
    Case(batch=1, seqlen_q=2048, seqlen_k=2048, heads_q=8, heads_kv=8, head_dim=256),
    Case(batch=1, seqlen_q=1536, seqlen_k=1536, heads_q=8, heads_kv=8, head_dim=192, causal=True),
    Case(batch=1, seqlen_q=2048, seqlen_k=2048, heads_q=8, heads_kv=4, head_dim=32, window=(256, 0)),
    Case(batch=1, seqlen_q=2049, seqlen_k=2047, heads_q=8, heads_kv=8, head_dim=128, window=(100, 50), softcap=30.0),
    Case(batch=2, seqlen_q=777, seqlen_k=1234, heads_q=4, heads_kv=4, head_dim=64, layout="bhsd", causal=True),
    Case(batch=2, seqlen_q=513, seqlen_k=513, heads_q=4, heads_kv=4, head_dim=128, layout="padded"),
]


REAL_MATRIX = [(c, torch.bfloat16) for c in REAL] + [(c, torch.float16) for c in REAL[::4]]


@pytest.mark.parametrize("case,dtype", REAL_MATRIX, ids=[f"{c.name}-{str(d)[6:]}" for c, d in REAL_MATRIX])
def test_real_sizes(case, dtype):
    for name in ("triton_hopper",):
        result = run_case(name, case, device="cuda", dtype=dtype)
        result.raise_for_failure()
        assert result.status == "pass", result.message


@pytest.mark.hopper
def test_sm90_dispatch_prefers_triton_hopper():
    q = torch.randn(2, 1024, 16, 128, device="cuda", dtype=torch.bfloat16)
    assert portattn.explain(q, q, q, causal=True, quiet=True).chosen == "triton_hopper"


def test_deterministic_backward():
    case = dataclasses.replace(REAL[2], seqlen_q=1024, seqlen_k=1024)
    from portattn.testing import make_inputs

    grads = []
    for _ in range(2):
        q, k, v = make_inputs(case, "cuda", torch.bfloat16, seed=3, requires_grad=True)
        out = portattn.attention(q, k, v, causal=True, backend="triton_hopper")
        out.backward(torch.ones_like(out))
        grads.append((q.grad.clone(), k.grad.clone(), v.grad.clone()))
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def test_torch_compile_fullgraph_on_gpu():
    q, k, v = (torch.randn(2, 512, 8, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))

    def block(q, k, v):
        return portattn.attention(q, k, v, causal=True) * 2

    compiled = torch.compile(block, fullgraph=True)
    out, expected = compiled(q, k, v), block(q, k, v)
    torch.testing.assert_close(out, expected)
    for a, b in zip(
        torch.autograd.grad(out.sum(), (q, k, v)), torch.autograd.grad(expected.sum(), (q, k, v)), strict=True
    ):
        torch.testing.assert_close(a, b)
