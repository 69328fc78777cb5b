"""The ``npu_fusion_attention`` mapping, tested on the CPU through an emulation of the op's documented
semantics (no NPU here): every expressible call must match the float64 reference."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from portattn import sparse
from portattn._call import normalize
from portattn.backends.ascend import fused
from portattn.backends.ascend.emulation import npu_fusion_attention_emulated as emulated
from portattn.testing import Case, assert_close, attention_reference, default_cases, make_inputs

QUICK = default_cases("quick")
BASE = Case()
EXTRA = [  # (case, top_left, with_bias)
    (replace(BASE, causal=True, seqlen_q=20, seqlen_k=45), True, False),
    (replace(BASE, causal=True, seqlen_q=45, seqlen_k=20), True, False),
    (replace(BASE, causal=True), True, False),
    (BASE, False, True),
    (replace(BASE, causal=True, seqlen_q=21, seqlen_k=40, heads_kv=2), False, True),
    (replace(BASE, mask="random", causal=True, seqlen_q=25, seqlen_k=41), False, True),
    (replace(BASE, seqlen_q=17, seqlen_k=50, window=(4, 2)), False, False),
    (replace(BASE, seqlen_q=50, seqlen_k=17, window=(3, 5)), False, False),
    (replace(BASE, seqlen_q=50, seqlen_k=17, window=(-1, 0)), True, False),
]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def build(case: Case, dtype=torch.float32, top_left=False, with_bias=False, requires_grad=False):
    q, k, v = make_inputs(case, dtype=dtype, requires_grad=requires_grad)
    kw = case.kwargs()
    bias = None
    if with_bias:
        gen = torch.Generator().manual_seed(3)
        bias = torch.randn(case.batch, 1, case.seqlen_q, case.seqlen_k, generator=gen).to(dtype)
    call = normalize(
        q,
        k,
        v,
        causal=kw["causal"],
        window=kw["window"],
        scale=kw.get("scale"),
        softcap=kw["softcap"],
        sparsity=kw.get("sparsity"),
        bias=bias,
        precision=None,
        return_lse=True,
        top_left=top_left,
    )
    return call, q, k, v


def expected_limit(call) -> bool:
    return call.softcap is not None or call.head_dim_v > call.head_dim


def check_mapping(case, dtype, top_left=False, with_bias=False) -> bool:
    """Run one call through plan + emulation; return whether the fused path expressed it."""
    call, q, k, v = build(case, dtype, top_left, with_bias, requires_grad=True)
    p = fused.plan(call)
    if isinstance(p, str):
        assert expected_limit(call), f"unexpected reason for {case.name}: {p}"
        assert any(word in p for word in ("softcap", "Dv", "fp8", "dense masks")), p
        return False
    assert not expected_limit(call)
    out, lse = fused.run(p, call, q, k, v, emulated)
    ref_out, ref_lse = attention_reference(call, q, k, v)
    tol = TOL[dtype]
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_close(out, ref_out, tol, tol, what=f"{case.name} out")
    assert_close(lse, ref_lse, tol, tol, what=f"{case.name} lse")
    gen = torch.Generator().manual_seed(5)
    dout = torch.randn(out.shape, generator=gen)
    dlse = torch.randn(lse.shape, generator=gen)
    finite = torch.isfinite(ref_lse)
    grads = torch.autograd.grad((out.float() * dout).sum() + (lse.where(finite, 0) * dlse).sum(), (q, k, v))
    ref_loss = (ref_out * dout.double()).sum() + (ref_lse.where(finite, 0) * dlse.double()).sum()
    ref_grads = torch.autograd.grad(ref_loss, (q, k, v))
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        assert_close(g, r, tol, tol, what=f"{case.name} d{name}")
    return True


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_quick_cases(dtype):
    expressed = [case.name for case in QUICK if check_mapping(case, dtype)]
    assert len(expressed) >= 15, expressed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case,top_left,with_bias", EXTRA, ids=lambda x: getattr(x, "name", str(x)))
def test_extra_calls(case, top_left, with_bias, dtype):
    assert check_mapping(case, dtype, top_left, with_bias)


def test_plan_modes():
    def mode(case, top_left=False):
        return fused.plan(build(case, top_left=top_left)[0])

    assert mode(BASE).sparse_mode == 0 and mode(BASE).atten_mask is None
    assert mode(replace(BASE, causal=True)).sparse_mode == 3
    assert mode(replace(BASE, causal=True, seqlen_q=19, seqlen_k=70)).sparse_mode == 3
    assert mode(replace(BASE, causal=True, seqlen_q=19, seqlen_k=70), top_left=True).sparse_mode == 2
    win = mode(replace(BASE, window=(8, 0)))
    assert (win.sparse_mode, win.pre_tockens, win.next_tockens, win.atten_mask) == (4, 8, 0, fused.COMPRESSED)
    assert mode(replace(BASE, window=(-1, 4))).pre_tockens == fused.MAX_TOCKENS
    assert mode(replace(BASE, causal=True, seqlen_q=70, seqlen_k=19)).inner_precise == 2
    assert mode(replace(BASE, causal=True)).inner_precise == 0
    dense = mode(replace(BASE, mask="random"))
    assert (dense.sparse_mode, dense.atten_mask, dense.inner_precise) == (1, fused.DENSE, 2)
    call = build(replace(BASE, scale=0.3))[0]
    assert fused.plan(call).scale == 0.3


def test_plan_reasons():
    call = build(BASE)[0]
    assert "fp8" in fused.plan(replace(call, precision="fp8"))

    class Blocks(sparse.SparsityPattern):
        kind = "block"

    assert "dense masks" in fused.plan(replace(call, sparsity=Blocks()))
    assert "softcap" in fused.plan(replace(call, softcap=3.0))
    assert "Dv" in fused.plan(replace(call, head_dim_v=64))


def test_compressed_mask_cached():
    m = fused.compressed_mask("cpu")
    assert m is fused.compressed_mask(torch.device("cpu"))
    assert m.shape == (2048, 2048) and m.dtype == torch.bool
    assert torch.equal(m, torch.triu(torch.ones(2048, 2048), 1).bool())


# --- the emulation itself, against the reference ---------------------------------------------


def ref(case, band, mask_allowed=None, scale=1.0, bias=None):
    q, k, v = make_inputs(case)
    sp = None if mask_allowed is None else sparse.dense_mask(mask_allowed)
    call = normalize(
        q, k, v, causal=False, window=None, scale=scale, softcap=None, sparsity=sp, bias=bias,
        precision=None, return_lse=True, top_left=False, band=band,
    )  # fmt: skip
    out, lse = attention_reference(call, q, k, v)
    return (q, k, v), out, lse


def emulate(qkv, layout="BSND", **kw):
    q, k, v = qkv
    if layout == "BNSD":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    out, mx, sm, *_ = emulated(q, k, v, q.shape[2 if layout == "BSND" else 1], layout, **kw)
    if layout == "BNSD":
        out = out.transpose(1, 2)
    assert mx.shape == sm.shape == (*out.shape[:1], out.shape[2], out.shape[1], 8)
    safe = torch.where(sm[..., 0] == 0, 1.0, sm[..., 0])
    return out, torch.where(sm[..., 0] == 0, float("-inf"), mx[..., 0] + torch.log(safe))


GQA = replace(BASE, seqlen_q=23, seqlen_k=37, heads_q=4, heads_kv=2)


@pytest.mark.parametrize("layout", ["BSND", "BNSD"])
def test_emulation_default_scale_is_one(layout):
    qkv, out, lse = ref(GQA, (None, None), scale=1.0)
    got, got_lse = emulate(qkv, layout)
    assert_close(got, out, 1e-5, 1e-5)
    assert_close(got_lse, lse, 1e-5, 1e-5)


@pytest.mark.parametrize("sq,sk", [(23, 37), (37, 23), (30, 30)])
def test_emulation_modes(sq, sk):
    case = replace(GQA, seqlen_q=sq, seqlen_k=sk)
    tile = fused.compressed_mask("cpu")
    off = sk - sq
    qkv, out, lse = ref(case, (None, 0), scale=0.2)
    assert_close(emulate(qkv, sparse_mode=2, atten_mask=tile, scale=0.2, inner_precise=2)[0], out, 1e-5, 1e-5)
    qkv, out, lse = ref(case, (None, off), scale=0.2)
    assert_close(emulate(qkv, sparse_mode=3, atten_mask=tile, scale=0.2, inner_precise=2)[1], lse, 1e-5, 1e-5)
    qkv, out, lse = ref(case, (off - 3, off + 2), scale=0.2)
    got = emulate(qkv, sparse_mode=4, atten_mask=tile, scale=0.2, pre_tockens=3, next_tockens=2, inner_precise=2)
    assert_close(got[0], out, 1e-5, 1e-5)
    assert_close(got[1], lse, 1e-5, 1e-5)


def test_emulation_mask_polarity_modes_0_and_1():
    gen = torch.Generator().manual_seed(1)
    allowed = torch.rand(2, 4, 23, 37, generator=gen) < 0.5
    allowed[..., 0] = True  # no empty rows: inner_precise stays 0
    qkv, out, lse = ref(GQA, (None, None), allowed, scale=0.2)
    got = emulate(qkv, sparse_mode=1, atten_mask=~allowed, scale=0.2)  # True = masked OUT
    assert_close(got[0], out, 1e-5, 1e-5)
    assert_close(got[1], lse, 1e-5, 1e-5)
    qkv, out, lse = ref(GQA, (-2, 5), allowed, scale=0.2)  # mode 0: mask plus top-left pre/next band
    got = emulate(qkv, sparse_mode=0, atten_mask=~allowed, scale=0.2, pre_tockens=2, next_tockens=5, inner_precise=2)
    assert_close(got[0], out, 1e-5, 1e-5)


def test_emulation_pse_is_scaled():
    bias = torch.randn(2, 4, 23, 37, generator=torch.Generator().manual_seed(2))
    qkv, out, _ = ref(GQA, (None, None), scale=0.5, bias=bias)
    assert_close(emulate(qkv, scale=0.5, pse=bias / 0.5)[0], out, 1e-5, 1e-5)


def test_emulation_empty_rows():
    case = replace(GQA, seqlen_q=37, seqlen_k=23)
    qkv, out, lse = ref(case, (None, -14))
    tile = fused.compressed_mask("cpu")
    got = emulate(qkv, sparse_mode=3, atten_mask=tile, inner_precise=2)
    assert_close(got[0], out, 1e-5, 1e-5)
    assert bool(torch.isneginf(got[1][:, :, :14]).all())
    assert bool(torch.isnan(emulate(qkv, sparse_mode=3, atten_mask=tile)[0][:, 0]).all())  # "undefined"


def test_emulation_rejects():
    qkv, _, _ = ref(GQA, (None, None))
    with pytest.raises(ValueError, match="2048x2048"):
        emulate(qkv, sparse_mode=3, atten_mask=torch.ones(23, 37, dtype=torch.bool).triu(1))
    with pytest.raises(ValueError, match="2048x2048"):
        emulate(qkv, sparse_mode=2)
    with pytest.raises(NotImplementedError, match="sparse_mode"):
        emulate(qkv, sparse_mode=5)
    with pytest.raises(NotImplementedError, match="keep_prob"):
        emulate(qkv, keep_prob=0.9)
    with pytest.raises(NotImplementedError, match="TND"):
        emulated(*qkv, 4, "TND")
