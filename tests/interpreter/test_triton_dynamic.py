"""``triton_hopper``'s interval walk (what ``qk_drop`` and ``hash_buckets`` compact to) under the
interpreter: forward, lse and gradients against the float64 reference of the dense mask."""

from __future__ import annotations

import pytest
import torch

import portattn
from portattn import sparse
from portattn.backends.reference.naive import attention_reference
from portattn.testing import assert_close, tolerances


@pytest.mark.parametrize("kind", ["qk_drop", "hash_buckets"])
@pytest.mark.parametrize("band", [dict(causal=False), dict(causal=True), dict(window=(9, 2))], ids=str)
def test_interval_walk_matches_reference(kind, band):
    gen = torch.Generator().manual_seed(len(kind) + len(str(band)))
    b, sq, sk, hq, hk = 2, 45, 53, 4, 2
    q = torch.randn(b, sq, hq, 16, generator=gen)
    k, v = (torch.randn(b, sk, hk, 16, generator=gen) for _ in range(2))
    dout = torch.randn(b, sq, hq, 16, generator=gen)
    if kind == "qk_drop":
        pattern = sparse.qk_drop(torch.rand(b, sq, hq, generator=gen) < 0.6, torch.rand(b, sk, hk, generator=gen) < 0.5)
    else:
        pattern = sparse.hash_buckets(torch.randint(0, 3, (b, sq, hq), generator=gen),
                                      torch.randint(0, 3, (b, sk, hk), generator=gen))  # fmt: skip
    info = portattn.explain(q, k, v, sparsity=pattern, quiet=True, **band)
    assert info.chosen == "triton_hopper", str(info)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = portattn.attention(*leaves, sparsity=pattern, backend="triton_hopper", return_lse=True, **band)
    got = torch.autograd.grad(out, leaves, dout)
    mask = pattern.allowed_mask(b, hq, sq, sk, "cpu")
    call = portattn.explain(q, k, v, sparsity=sparse.dense_mask(mask), return_lse=True, quiet=True, **band).call
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    ref, ref_lse = attention_reference(call, *exact)
    want = torch.autograd.grad(ref, exact, dout.double())
    assert_close(out, ref.float(), *tolerances.forward(torch.float32))
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    for what, g, w in zip("qkv", got, want, strict=True):
        assert_close(g, w.float(), *tolerances.backward(torch.float32), what=f"d{what}")
