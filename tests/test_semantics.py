"""SPEC §1 semantics, checked against independent formulas (explicit masks fed to torch SDPA in float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import portattn

BACKENDS = ["portable", "reference"]
TOL = {"atol": 2e-5, "rtol": 2e-5}  # float32 inputs vs a float64 oracle


def rand(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def qkv(b=2, sq=9, sk=13, hq=4, hkv=4, d=16, dtype=torch.float32, seed=0):
    return (
        rand(b, sq, hq, d, dtype=dtype, seed=seed),
        rand(b, sk, hkv, d, dtype=dtype, seed=seed + 1),
        rand(b, sk, hkv, d, dtype=dtype, seed=seed + 2),
    )


def spec_mask(sq, sk, causal=False, window=None):
    """SPEC §1 word for word: bottom-right causal and window on off = seqlen_k - seqlen_q."""
    off = sk - sq
    allowed = torch.ones(sq, sk, dtype=torch.bool)
    for i in range(sq):
        for j in range(sk):
            if causal and not j <= i + off:
                allowed[i, j] = False
            if window is not None:
                left, right = window
                if left != -1 and j < i + off - left:
                    allowed[i, j] = False
                if right != -1 and j > i + off + right:
                    allowed[i, j] = False
    return allowed


def oracle(q, k, v, mask=None, scale=None):
    """torch SDPA (math, float64) with an explicit mask; GQA by repeating K/V."""
    g = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(g, dim=2), v.repeat_interleave(g, dim=2)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2).double(), k.transpose(1, 2).double(), v.transpose(1, 2).double(), attn_mask=mask, scale=scale
    )
    return out.transpose(1, 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sq,sk", [(5, 12), (12, 12), (7, 20), (1, 9)])
def test_causal_is_bottom_right(backend, sq, sk):
    q, k, v = qkv(sq=sq, sk=sk)
    out = portattn.attention(q, k, v, causal=True, backend=backend)
    torch.testing.assert_close(out.double(), oracle(q, k, v, spec_mask(sq, sk, causal=True)), **TOL)
    # the last query row sees every key
    full = portattn.attention(q[:, -1:], k, v, backend=backend)
    torch.testing.assert_close(out[:, -1:], full)


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_with_more_queries_than_keys_leaves_empty_rows(backend):
    q, k, v = qkv(sq=12, sk=5)
    out, lse = portattn.attention(q, k, v, causal=True, return_lse=True, backend=backend)
    empty = 12 - 5  # rows i < seqlen_q - seqlen_k see nothing
    assert torch.equal(out[:, :empty], torch.zeros_like(out[:, :empty]))
    assert torch.isinf(lse[..., :empty]).all() and (lse[..., :empty] < 0).all()
    expected = oracle(q[:, empty:], k, v, spec_mask(5, 5, causal=True))
    torch.testing.assert_close(out[:, empty:].double(), expected, **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "window,causal",
    [((3, 2), False), ((-1, 0), False), ((4, -1), False), ((2, -1), True), ((0, 5), True), ((-1, -1), False)],
)
@pytest.mark.parametrize("sq,sk", [(10, 10), (6, 15), (15, 9)])
def test_window(backend, window, causal, sq, sk):
    q, k, v = qkv(sq=sq, sk=sk)
    mask = spec_mask(sq, sk, causal=causal, window=window)
    out = portattn.attention(q, k, v, causal=causal, window=window, backend=backend)
    rows = mask.any(-1)
    torch.testing.assert_close(out[:, rows].double(), oracle(q, k, v, mask)[:, rows], **TOL)
    assert torch.equal(out[:, ~rows], torch.zeros_like(out[:, ~rows]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "window,causal", [((2**31 - 8, 2**31 - 8), False), ((3, 2**40), False), ((2**31 - 1, 0), True)]
)
def test_window_wider_than_int32(backend, window, causal):
    """A window past 32 bits is as wide as the lengths; the call's band is clipped to them."""
    q, k, v = qkv(sq=10, sk=13)
    call = portattn.explain(q, k, v, causal=causal, window=window, quiet=True).call
    assert call.band[0] >= -10 and (call.band[1] is None or call.band[1] <= 13)
    out = portattn.attention(q, k, v, causal=causal, window=window, backend=backend)
    torch.testing.assert_close(out.double(), oracle(q, k, v, spec_mask(10, 13, causal=causal, window=window)), **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softcap_caps_scaled_scores(backend):
    q, k, v = qkv()
    q = q * 4  # large scores, so capping matters
    cap, scale = 3.0, 0.2
    scores = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) * scale
    probs = torch.softmax(cap * torch.tanh(scores / cap), dim=-1)
    expected = torch.einsum("bhij,bjhd->bihd", probs, v.double())
    out = portattn.attention(q, k, v, softcap=cap, scale=scale, backend=backend)
    torch.testing.assert_close(out.double(), expected, **TOL)
    assert (out - portattn.attention(q, k, v, scale=scale, backend=backend)).abs().max() > 1e-3


@pytest.mark.parametrize("backend", BACKENDS + ["sdpa"])
@pytest.mark.parametrize("hkv", [1, 2])
def test_gqa_equals_repeated_heads(backend, hkv):
    q, k, v = qkv(sq=11, sk=11, hq=6, hkv=hkv)
    out = portattn.attention(q, k, v, causal=True, backend=backend)
    rep = 6 // hkv
    expected = portattn.attention(
        q, k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2), causal=True, backend="reference"
    )
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lse_is_natural_log_sum_exp(backend):
    q, k, v = qkv(sq=7, sk=10, hq=4, hkv=2)
    _, lse = portattn.attention(q, k, v, return_lse=True, backend=backend)
    scores = torch.einsum("bihd,bjhd->bhij", q.double(), k.repeat_interleave(2, dim=2).double()) * 16**-0.5
    assert lse.dtype == torch.float32 and lse.shape == (2, 4, 7)
    torch.testing.assert_close(lse.double(), torch.logsumexp(scores, dim=-1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS + ["sdpa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fully_masked_rows_have_zero_output_and_gradient(backend, dtype):
    q, k, v = qkv(sq=8, sk=8, dtype=dtype)
    allowed = torch.rand(2, 4, 8, 8, generator=torch.Generator().manual_seed(3)) < 0.7
    allowed[:, :, [0, 5]] = False  # rows 0 and 5 see nothing
    for t in (q, k, v):
        t.requires_grad_(True)
    out = portattn.attention(q, k, v, sparsity=portattn.sparse.dense_mask(allowed), backend=backend)
    out.backward(torch.randn_like(out))
    for name, t in (("out", out), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
        assert not torch.isnan(t).any(), name
    assert torch.equal(out[:, [0, 5]], torch.zeros_like(out[:, [0, 5]]))
    assert torch.equal(q.grad[:, [0, 5]], torch.zeros_like(q.grad[:, [0, 5]]))


def test_no_visible_key_anywhere():
    q, k, v = qkv(sq=6, sk=3)
    out, lse = portattn.attention(q, k, v, window=(0, 0), causal=True, return_lse=True)
    assert torch.equal(out[:, :3], torch.zeros_like(out[:, :3]))
    assert torch.isneginf(lse[..., :3]).all()


def test_output_dtype_layout_and_head_dim_v():
    q, k, v = rand(2, 5, 4, 16), rand(2, 7, 2, 16), rand(2, 7, 2, 24)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        out = portattn.attention(q.to(dtype), k.to(dtype), v.to(dtype))
        assert out.dtype == dtype and out.shape == (2, 5, 4, 24)


# ---- portattn.sdpa is a drop-in for F.scaled_dot_product_attention ----


def sdpa_inputs(b=2, h=4, hkv=4, sq=9, sk=13, d=16, dtype=torch.float32):
    return (
        rand(b, h, sq, d, dtype=dtype),
        rand(b, hkv, sk, d, dtype=dtype, seed=1),
        rand(b, hkv, sk, d, dtype=dtype, seed=2),
    )


@pytest.mark.parametrize("sq,sk", [(9, 13), (13, 9), (11, 11)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_sdpa_matches_torch(sq, sk, is_causal):
    q, k, v = sdpa_inputs(sq=sq, sk=sk)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    torch.testing.assert_close(portattn.sdpa(q, k, v, is_causal=is_causal), expected)


@pytest.mark.parametrize(
    "shape", [(9, 13), (1, 1, 9, 13), (2, 1, 9, 13), (1, 4, 9, 13), (2, 4, 9, 13), (1, 13), (4, 1, 13)]
)
def test_sdpa_boolean_mask_broadcasts_like_torch(shape):
    q, k, v = sdpa_inputs()
    mask = torch.rand(*shape, generator=torch.Generator().manual_seed(5)) < 0.7
    mask[..., 0] = True  # torch's own kernels disagree on rows with nothing visible; tested separately
    torch.testing.assert_close(
        portattn.sdpa(q, k, v, attn_mask=mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    )


def test_sdpa_additive_mask_and_scale():
    q, k, v = sdpa_inputs()
    bias = rand(2, 1, 9, 13, seed=9)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3)
    torch.testing.assert_close(portattn.sdpa(q, k, v, attn_mask=bias, scale=0.3), expected)


def test_sdpa_mask_with_causal_and_gqa():
    q, k, v = sdpa_inputs(h=6, hkv=2, sq=10, sk=10)
    mask = torch.rand(10, 10, generator=torch.Generator().manual_seed(1)) < 0.8
    mask[:, 0] = True
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask & causal, enable_gqa=True)
    torch.testing.assert_close(portattn.sdpa(q, k, v, attn_mask=mask, is_causal=True, enable_gqa=True), expected)


def test_sdpa_three_dim_inputs_and_gradients():
    q, k, v = (rand(3, 7, 8, seed=s).requires_grad_() for s in range(3))
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = portattn.sdpa(q, k, v, is_causal=True)
    ref = F.scaled_dot_product_attention(q2, k2, v2, is_causal=True)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    for a, b in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad, b.grad)


def test_sdpa_refuses_dropout_and_ungrouped_heads():
    q, k, v = sdpa_inputs(h=4, hkv=2)
    with pytest.raises(ValueError, match="dropout_p"):
        portattn.sdpa(q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match="enable_gqa"):
        portattn.sdpa(q, k, v)
