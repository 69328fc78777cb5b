"""Every built-in backend vs the float64 reference on the kit's cases: forward, lse and gradients."""

from __future__ import annotations

import pytest
import torch

from portattn.backends.portable import PortableBackend
from portattn.testing import default_cases, run_case

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CASES = default_cases("quick")
# Small tiles so that even the small cases cross many tile boundaries (masked tails, skipped tiles).
SMALL_TILES = PortableBackend(block_q=16, block_k=8)


def _check(backend, case, dtype, seed):
    result = run_case(backend, case, dtype=dtype, seed=seed)
    result.raise_for_failure()
    return result


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.name for c in CASES])
@pytest.mark.parametrize(
    "backend", ["portable", SMALL_TILES, "reference"], ids=["portable", "portable-tiles16x8", "reference"]
)
def test_full_feature_backends(backend, index, dtype):
    """These backends claim every feature the battery uses: each case must run and pass."""
    result = _check(backend, CASES[index], dtype, seed=index)
    assert result.status == "pass", result.message
    assert {"out", "lse", "dq", "dk", "dv"} <= set(result.errors)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.name for c in CASES])
def test_sdpa_where_it_claims_support(index, dtype):
    result = _check("sdpa", CASES[index], dtype, seed=index)
    if result.status == "unsupported":
        # only for what torch SDPA really cannot express
        assert any(w in result.message for w in ("window", "softcap", "bottom-right")), result.message
    else:
        assert result.status == "pass"
        assert {"out", "dq", "dk", "dv"} <= set(result.errors)


def test_sdpa_serves_the_plain_cases():
    served = [c.name for i, c in enumerate(CASES) if run_case("sdpa", c, seed=i).status == "pass"]
    assert len(served) >= 12, served


@pytest.mark.parametrize("index", range(len(default_cases("full")) - len(CASES)))
def test_portable_larger_shapes(index):
    case = default_cases("full")[len(CASES) + index]
    result = _check(PortableBackend(block_q=64, block_k=128), case, torch.float32, seed=index)
    assert result.status == "pass"


def test_a_wrong_backend_fails_the_kit():
    """The kit must catch a backend that is slightly wrong (a check that cannot fail is no check)."""

    class OffByScale(PortableBackend):
        name = "off_by_scale"

        def forward(self, call, q, k, v):
            out, lse = super().forward(call, q, k, v)
            return out * 1.01, lse

    result = run_case(OffByScale(), CASES[0], dtype=torch.float32)
    assert result.status == "fail" and "out" in result.message


def test_a_nan_backend_fails_the_kit():
    class LeavesNaN(PortableBackend):
        name = "leaves_nan"

        def forward(self, call, q, k, v):
            out, lse = super().forward(call, q, k, v)
            out[:, 0] = float("nan")
            return out, lse

    result = run_case(LeavesNaN(), CASES[0], dtype=torch.float32)
    assert result.status == "fail" and "NaN" in result.message


def test_a_wrong_gradient_fails_the_kit():
    class BadGrad(PortableBackend):
        name = "bad_grad"

        def backward(self, call, q, k, v, out, lse, dout, dlse=None):
            dq, dk, dv = super().backward(call, q, k, v, out, lse, dout, dlse)
            return dq, dk * 0.9, dv

    result = run_case(BadGrad(), CASES[0], dtype=torch.float32)
    assert result.status == "fail" and "dk" in result.message
