"""FP8 pieces that are plain torch (``triton_hopper.quant``) and the FP8 dispatch rules, on the CPU."""

from __future__ import annotations

import math

import pytest
import torch

import portattn
from portattn.backends.triton_hopper import quant


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


@pytest.mark.parametrize("n", [16, 64, 128, 256])
def test_rotation_is_orthogonal_signed_hadamard(n):
    m = quant.rotation(n, dtype=torch.float64)
    assert torch.allclose(m @ m.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.equal(m, torch.diag(quant.signs(n)) @ _sylvester(n) / math.sqrt(n))
    assert {-1.0, 1.0} == set(quant.signs(n).tolist())  # both signs occur
    x = torch.randn(5, 3, n, dtype=torch.float64)
    assert torch.allclose(quant.rotate(x), x @ m, atol=1e-12)  # the fast transform is the same rotation


def test_rotation_preserves_scores_and_spreads_outliers():
    q, k = torch.randn(40, 128, dtype=torch.float64), torch.randn(50, 128, dtype=torch.float64)
    q[3, 7] = 200.0  # one outlier coordinate
    qr, kr = quant.rotate(q), quant.rotate(k)
    assert torch.allclose(qr @ kr.T, q @ k.T, atol=1e-9)
    assert qr[3].abs().max() < 30.0 < q[3].abs().max()  # 200 spread over 128 coordinates: ~17.7 each


def test_fwht_refuses_non_power_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        quant.fwht(torch.randn(3, 48))


@pytest.mark.parametrize("block", [16, 64])
def test_block_quantization_round_trips_within_e4m3_error(block):
    x = torch.randn(2, 37, 3, 64, dtype=torch.bfloat16) * 3
    values, scale = quant.quantize_blocks(x, block)
    assert values.dtype == torch.float8_e4m3fn and values.shape == x.shape
    assert scale.shape == (2, 3, -(-37 // block))
    back = quant.dequantize_blocks(values, scale, block)
    # e4m3 keeps 3 mantissa bits: relative error <= 2**-4 for normal values, plus the subnormal floor
    per_row = scale.double().repeat_interleave(block, dim=2)[:, :, :37].transpose(1, 2)[..., None]
    bound = x.double().abs() * 2**-4 + per_row * 2**-10
    assert ((back - x.double()).abs() <= bound).all()
    amax_code = values.float().abs().amax(dim=(1, 3))  # each (batch, head) reaches 448 in some block
    assert torch.all(amax_code == 448.0)


def test_per_tensor_scale_is_one_number():
    x = torch.randn(2, 10, 2, 16)
    x[0, 0, 0, 0] = 100.0
    values, scale = quant.quantize_tensor(x)
    assert scale.numel() == 1 and math.isclose(scale.item(), 100.0 / 448.0, rel_tol=1e-6)
    assert values.float().abs().max().item() == 448.0


def test_fp8_with_grad_falls_back_to_the_input_dtype():
    q, k, v = (torch.randn(1, 9, 2, 16, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    with pytest.raises(portattn.NoBackendError):  # forward-only FP8: nothing on this CPU serves it
        portattn.attention(q.detach(), k.detach(), v.detach(), precision="fp8")
    out = portattn.attention(q, k, v, precision="fp8")
    exact = portattn.attention(q, k, v, backend="reference")
    assert out.dtype == torch.bfloat16  # computed in the input dtype, like any 16-bit call
    torch.testing.assert_close(out.double(), exact.double(), atol=2e-2, rtol=2e-2)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    text = str(portattn.explain(q, k, v, precision="fp8"))
    assert "no backend has an FP8 backward" in text and "chosen:" in text


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_signed_hadamard_is_exact_in_16_bits(dtype):
    h = quant.signed_hadamard(128, dtype=dtype)
    assert set(h.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(h.double() / math.sqrt(128), quant.rotation(128, dtype=torch.float64))
    # one copy per (size, device, dtype): a copy from the host per call would stall a GPU's queue
    assert quant.signed_hadamard(128, "cpu", dtype) is h


def test_float8_inputs_are_validated_before_any_kernel():
    q8, qd = quant.quantize_per_kv_head(torch.randn(2, 9, 4, 16), 2)
    k8, kd = quant.quantize_per_kv_head(torch.randn(2, 11, 2, 16), 2)
    v8, vd = quant.quantize_per_kv_head(torch.randn(2, 11, 2, 16), 2)
    with pytest.raises(TypeError, match="precision='fp8'"):
        portattn.attention(q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd)
    with pytest.raises(TypeError, match="k_descale"):
        portattn.attention(q8, k8, v8, precision="fp8", q_descale=qd, v_descale=vd)
    with pytest.raises(ValueError, match=r"v_descale must be float32 \(2, 2\)"):
        portattn.attention(q8, k8, v8, precision="fp8", q_descale=qd, k_descale=kd, v_descale=vd[:, :1])
    with pytest.raises(ValueError, match="float8_e4m3fn inputs only"):
        portattn.attention(*(torch.randn(2, 9, 2, 16) for _ in range(3)), q_descale=qd)
    with pytest.raises(portattn.NoBackendError, match="dtype float8_e4m3fn not supported"):
        portattn.attention(q8, k8, v8, precision="fp8", q_descale=qd, k_descale=kd, v_descale=vd)


def test_p_operand_key_order_is_the_kernels_relabelling():
    """The V^T key order of ``permute_v`` is a permutation within each 32 keys, and it is what the Gluon
    forward's reshape (row, 32 keys, h, j, t, e) -> permute (h, t, j, e) does to P's columns, so
    ``P' V'`` sums the same products as ``P V``."""
    order = quant.p_operand_key_order(128)
    assert sorted(order.tolist()) == list(range(128))
    assert torch.equal(order // 32, torch.arange(128) // 32)
    relabelled = torch.arange(128).reshape(4, 2, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(128)
    assert torch.equal(order, relabelled)
    # thread t's accumulator columns (2t, 2t+1, 8+2t, 9+2t) fill its operand slots 4t .. 4t+3
    for t in range(4):
        assert order[4 * t : 4 * t + 4].tolist() == [2 * t, 2 * t + 1, 8 + 2 * t, 9 + 2 * t]
    gen = torch.Generator().manual_seed(3)
    p, v = (
        torch.rand(5, 128, generator=gen, dtype=torch.float64),
        torch.randn(128, 7, generator=gen, dtype=torch.float64),
    )
    torch.testing.assert_close(p[:, order] @ v[order], p @ v)
    with pytest.raises(ValueError, match="multiple of 32"):
        quant.p_operand_key_order(48)


def test_prequantized_v_takes_the_key_order():
    """Caller-quantized V, transposed for the FP8 MMA with ``permute_keys``: the plain layout's keys, reordered."""
    from portattn.backends.triton_hopper import launch

    gen = torch.Generator().manual_seed(4)
    v8, descale = quant.quantize_per_kv_head(torch.randn(2, 70, 2, 24, generator=gen), 2)
    plain, plain_scales = launch._pad_prequantized(v8, descale, 64, 32, True, 1)
    permuted, scales = launch._pad_prequantized(v8, descale, 64, 32, True, 1, permute_keys=True)
    assert permuted.shape == plain.shape == (2, 32, 2, 128) and torch.equal(scales, plain_scales)
    order = quant.p_operand_key_order(128)
    assert torch.equal(permuted.view(torch.int8), plain[..., order].view(torch.int8))
