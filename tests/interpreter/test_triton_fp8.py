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
def test_prepass_matches_torch(rotate):
    """One launch quantizes Q, K (rotated if asked) and V (transposed), each in its own tile size, with
    GQA's fewer K/V heads, lengths that are not multiples of the tiles, and a padded head dim."""
    torch.manual_seed(1)
    q = torch.randn(2, 37, 4, 40, dtype=torch.bfloat16)
    k = torch.randn(2, 21, 2, 40, dtype=torch.bfloat16)
    v = torch.randn(2, 21, 2, 24, dtype=torch.bfloat16)
    q[1, 5, 2, 7] = 60.0  # an outlier
    block_q, block_kv, dim_pad = 16, 8, 64
    rotation = quant.signed_hadamard(dim_pad, dtype=q.dtype) if rotate else None
    q8, qs, k8, ks, v8, vs = launch._quantize_qkv(q, k, v, block_q, block_kv, rotation)
    assert q8.shape == (2, 48, 4, dim_pad) and k8.shape == (2, 24, 2, dim_pad) and v8.shape == (2, 32, 2, 24)
    assert qs.shape == (2, 4, 3) and ks.shape == vs.shape == (2, 2, 3)
    v8 = v8.permute(0, 3, 2, 1)  # back to (batch, seqlen_pad, heads, dim_v_pad)
    for x, values, scale, block, seqlen, rot in ((q, q8, qs, block_q, 37, rotate), (k, k8, ks, block_kv, 21, rotate),
                                                 (v, v8, vs, block_kv, 21, False)):  # fmt: skip
        padded = torch.nn.functional.pad(x.double(), (0, values.shape[-1] - x.shape[-1]))
        want_values, want_scale = quant.quantize_blocks(quant.rotate(padded) if rot else padded, block)
        torch.testing.assert_close(scale, want_scale, rtol=1e-5, atol=0)
        assert values[:, seqlen:].float().abs().max() == 0  # padded rows are zeros, never NaN codes
        steps = _e4m3_steps(values[:, :seqlen].contiguous(), want_values.contiguous())
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


def test_prepass_permutes_v_keys():
    """``permute_keys`` (the Gluon forward's ``permute_v``): V^T holds the plain prepass's values, its keys
    reordered within each 32 by ``quant.p_operand_key_order``; Q, K and the scales are untouched. Two key
    tiles of 32, the second one mostly padding."""
    torch.manual_seed(2)
    q = torch.randn(1, 20, 2, 32, dtype=torch.bfloat16)
    k = torch.randn(1, 45, 1, 32, dtype=torch.bfloat16)
    v = torch.randn(1, 45, 1, 16, dtype=torch.bfloat16)
    plain = launch._quantize_qkv(q, k, v, 16, 32, None)
    permuted = launch._quantize_qkv(q, k, v, 16, 32, None, permute_keys=True)
    order = quant.p_operand_key_order(64)
    for i, (a, b) in enumerate(zip(plain, permuted, strict=True)):
        want = a[..., order] if i == 4 else a
        assert torch.equal(b.view(torch.int8) if b.dtype != torch.float32 else b,
                           want.view(torch.int8) if want.dtype != torch.float32 else want), i  # fmt: skip
    with pytest.raises(ValueError, match="multiple of 32"):
        launch._quantize_qkv(q, k, v, 16, 16, None, permute_keys=True)
