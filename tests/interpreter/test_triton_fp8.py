"""``precision="fp8"`` of ``triton_hopper`` under ``TRITON_INTERPRET=1`` on CPU tensors.

The prepass against ``quant``'s torch implementation, and the forward against (a) an emulation in
float64 on the same dequantized blocks, which it must match closely (only P's e4m3 rounding differs),
and (b) the exact reference, within FP8's error. The GPU runs the same kernels in tests/test_gpu.py.
"""

from __future__ import annotations

import pytest
import torch

import portattn
from portattn.backends.triton_hopper import configs, quant

pytest.importorskip("triton", reason="triton is not installed (pip install 'portattn[triton]')")

from portattn.backends.triton_hopper import launch  # noqa: E402  (imports triton)


@pytest.fixture(autouse=True)
def interpreter(fresh_registry):
    """Built-ins only, probed afresh (the interpreter makes triton_hopper available on the CPU)."""


def _e4m3_steps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many e4m3 codes apart two float8 tensors are (same sign assumed near zero)."""
    return (a.view(torch.int8).int() - b.view(torch.int8).int()).abs()


@pytest.mark.parametrize("rotate", [True, False])
@pytest.mark.parametrize("transpose", [False, True])
def test_prepass_matches_torch(rotate, transpose):
    torch.manual_seed(1)
    x = torch.randn(2, 37, 3, 40, dtype=torch.bfloat16)
    x[1, 5, 2, 7] = 60.0  # an outlier
    block, dim_pad = 16, 64
    rotation = quant.signed_hadamard(dim_pad, dtype=x.dtype) if rotate else None
    values, scale = launch._quantize(x, block, dim_pad, rotation, transpose)
    padded = torch.nn.functional.pad(x.double(), (0, dim_pad - 40))
    want_values, want_scale = quant.quantize_blocks(quant.rotate(padded) if rotate else padded, block)
    assert scale.shape == want_scale.shape == (2, 3, 3)
    torch.testing.assert_close(scale, want_scale, rtol=1e-5, atol=0)
    if transpose:
        assert values.shape == (2, dim_pad, 3, 48)
        values = values.permute(0, 3, 2, 1)
    else:
        assert values.shape == (2, 48, 3, dim_pad)
    assert values[:, 37:].float().abs().max() == 0  # padded rows are zeros, never NaN codes
    steps = _e4m3_steps(values[:, :37].contiguous(), want_values.contiguous())
    # the kernel rotates in float32, the reference in float64: a value on a rounding boundary may
    # land one code away, nothing more
    assert steps.max() <= 1 and (steps == 0).float().mean() > 0.99


CASES = [
    # (batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, head_dim_v, kwargs)
    (2, 37, 37, 2, 2, 64, 64, {}),
    (1, 33, 50, 4, 2, 40, 40, {"causal": True}),
    (2, 45, 30, 2, 1, 32, 32, {"causal": True}),  # seqlen_q > seqlen_k: first rows see no key
    (1, 40, 40, 2, 2, 32, 48, {"window": (5, 0)}),
    (1, 29, 29, 2, 2, 64, 64, {"softcap": 5.0}),
]


@pytest.mark.parametrize("path", ["pointer", "host"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[1]}x{c[2]}-d{c[5]}-{sorted(c[7])}" for c in CASES])
def test_fp8_forward(monkeypatch, path, case):
    monkeypatch.setenv("PORTATTN_TRITON_TMA", {"host": "host", "pointer": "0"}[path])
    b, sq, sk, hq, hk, d, dv, kw = case
    torch.manual_seed(sq * sk + d)
    q = torch.randn(b, sq, hq, d, dtype=torch.bfloat16)
    k = torch.randn(b, sk, hk, d, dtype=torch.bfloat16)
    v = torch.randn(b, sk, hk, dv, dtype=torch.bfloat16)
    out, lse = portattn.attention(q, k, v, precision="fp8", return_lse=True, **kw)
    assert out.dtype == torch.bfloat16 and out.shape == (b, sq, hq, dv)
    assert not out.isnan().any() and not lse.isnan().any()
    cfg = configs.pick("fwd8", max(d, dv), None)
    emu_out, emu_lse = quant.emulated_attention(q, k, v, cfg.block_m, cfg.block_n, **kw)
    exact_out, exact_lse = portattn.attention(q, k, v, backend="reference", return_lse=True, **kw)
    empty = exact_lse == float("-inf")
    assert torch.equal(lse == float("-inf"), empty) and torch.equal(emu_lse == float("-inf"), empty)
    assert torch.all(out.float().transpose(1, 2)[empty] == 0)  # rows that see no key
    # (a) against the emulation: only P's e4m3 rounding (relative 2**-4 at most, unbiased) and the
    # bf16 output separate them; with few visible keys it does not average out
    err_emu = (out.double() - emu_out).abs()
    assert err_emu.max() < 2**-4 * v.abs().max() + 0.01, err_emu.max()
    assert err_emu.mean() < 0.01, err_emu.mean()
    seen = ~empty
    assert (lse.double() - emu_lse.double())[seen].abs().max() < 1e-3
    # (b) against the exact reference: FP8's error, well below the output's spread
    err = (out.double() - exact_out.double()).abs()
    assert err.pow(2).mean().sqrt() < 0.04 and err.max() < 0.25, (err.max(), err.pow(2).mean().sqrt())
    assert (lse.double() - exact_lse.double())[seen].abs().max() < 0.15


def test_fp8_forward_float16_non_contiguous():
    """float16 inputs in the (batch, heads, seqlen, dim) memory layout, viewed as (batch, seqlen, heads, dim)."""
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, h, s, 64, dtype=torch.float16).transpose(1, 2) for h, s in ((4, 35), (2, 47), (2, 47)))
    assert not q.is_contiguous()
    out = portattn.attention(q, k, v, precision="fp8", causal=True)
    assert out.dtype == torch.float16 and not out.isnan().any()
    cfg = configs.pick("fwd8", 64, None)
    emu_out, _ = quant.emulated_attention(q, k, v, cfg.block_m, cfg.block_n, causal=True)
    err = (out.double() - emu_out.double()).abs()
    assert err.max() < 2**-4 * v.abs().max() + 0.01 and err.mean() < 0.01, (err.max(), err.mean())


@pytest.mark.parametrize("path", ["pointer", "host"])
@pytest.mark.parametrize("head_dim", [64, 40])  # 64: Q, K read in place; 40: rows of 40 bytes, padded copy
def test_prequantized_float8_inputs_with_descales(monkeypatch, path, head_dim):
    """FA3's API shape: the caller quantizes (one descale per batch and kv head); no rotation here."""
    monkeypatch.setenv("PORTATTN_TRITON_TMA", {"host": "host", "pointer": "0"}[path])
    torch.manual_seed(5)
    q, k, v = (torch.randn(2, s, h, head_dim) for s, h in ((41, 4), (50, 2), (50, 2)))
    (q8, qd), (k8, kd), (v8, vd) = (quant.quantize_per_kv_head(x, 2) for x in (q, k, v))
    out, lse = portattn.attention(
        q8, k8, v8, precision="fp8", q_descale=qd, k_descale=kd, v_descale=vd, causal=True, return_lse=True
    )
    assert out.dtype == torch.bfloat16 and out.shape == (2, 41, 4, head_dim) and not out.isnan().any()
    group = torch.tensor([0, 0, 1, 1])  # query head -> kv head

    def dequant(x8, descale, heads):
        return (x8.double() * descale[:, None, heads, None]).float()

    qx, kx, vx = dequant(q8, qd, group), dequant(k8, kd, torch.arange(2)), dequant(v8, vd, torch.arange(2))
    want, want_lse = portattn.attention(qx, kx, vx, backend="reference", causal=True, return_lse=True)
    err = (out.double() - want.double()).abs()  # only P's e4m3 rounding and the bf16 output differ
    assert err.max() < 2**-4 * vx.abs().max() + 0.01 and err.mean() < 0.01, (err.max(), err.mean())
    assert (lse.double() - want_lse.double()).abs().max() < 1e-3
