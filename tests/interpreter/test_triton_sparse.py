"""``triton_hopper``'s block-sparse forward and backward under the interpreter: only a pattern's
visible tiles are loaded, partial ones take their element mask, and the output and the gradients match
the float64 reference."""

from __future__ import annotations

import pytest
import torch

import portattn
from portattn import sparse
from portattn.backends.reference.naive import attention_reference
from portattn.testing import assert_close, tolerances

PATTERNS = [
    ("bigbird", lambda: sparse.bigbird(3, 2, 1, seed=1, block=16)),
    ("window", lambda: sparse.sliding_window(5, 3, block=16)),
    ("global|random", lambda: sparse.global_tokens([5, 40], block=16) | sparse.random_blocks(1, seed=3, block=16)),
    ("window&window", lambda: sparse.sliding_window(20, 20, block=16) & sparse.sliding_window(-1, 0, block=16)),
    ("random 32", lambda: sparse.random_blocks(1, seed=2, block=32)),  # tiles smaller than the pattern's blocks
]
SHAPES = [(50, 70), (70, 33), (33, 33)]


@pytest.mark.parametrize("name,make", PATTERNS, ids=[p[0] for p in PATTERNS])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparse_forward_matches_reference(name, make, causal, dtype):
    pattern = make()
    for sq, sk in SHAPES:
        gen = torch.Generator().manual_seed(sq + sk)
        q = torch.randn(2, sq, 4, 16, generator=gen).to(dtype)
        k, v = (torch.randn(2, sk, 2, 16, generator=gen).to(dtype) for _ in range(2))
        out, lse = portattn.attention(q, k, v, causal=causal, sparsity=pattern, backend="triton_hopper",
                                      return_lse=True)  # fmt: skip
        ref, ref_lse = portattn.attention(q.float(), k.float(), v.float(), causal=causal, sparsity=pattern,
                                          backend="reference", return_lse=True)  # fmt: skip
        assert_close(out, ref, *tolerances.forward(dtype), what=f"out {sq}x{sk}")
        assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "rows that see no key: lse -inf"
        finite = torch.isfinite(ref_lse)
        assert_close(lse[finite], ref_lse[finite], 1e-3, 1e-3, what="lse")


@pytest.mark.parametrize("name,make", PATTERNS, ids=[p[0] for p in PATTERNS])
@pytest.mark.parametrize("causal", [False, True])
def test_sparse_gradients_match_reference(name, make, causal):
    """dQ, dK, dV (the dQ walk over the pattern's lists, the dK/dV walk over the transposed ones) and
    an upstream lse gradient, against the float64 reference; GQA, odd lengths, rows that see no key."""
    pattern = make()
    for sq, sk in SHAPES[:2]:
        gen = torch.Generator().manual_seed(sq * sk)
        q = torch.randn(1, sq, 4, 16, generator=gen, dtype=torch.float64)
        k, v = (torch.randn(1, sk, 2, 16, generator=gen, dtype=torch.float64) for _ in range(2))
        dout = torch.randn(1, sq, 4, 16, generator=gen, dtype=torch.float64)
        dlse = torch.randn(1, 4, sq, generator=gen, dtype=torch.float64)
        grads = []
        for dtype in (torch.float32, torch.float64):
            leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
            if dtype == torch.float32:
                out, lse = portattn.attention(*leaves, causal=causal, sparsity=pattern, backend="triton_hopper",
                                              return_lse=True)  # fmt: skip
            else:  # the float64 reference, differentiated by autograd
                call = portattn.explain(*(t.float() for t in leaves), causal=causal, sparsity=pattern,
                                        return_lse=True, quiet=True).call  # fmt: skip
                out, lse = attention_reference(call, *leaves)
            loss = (out * dout.to(dtype)).sum() + (torch.where(torch.isinf(lse), 0, lse) * dlse.to(dtype)).sum()
            grads.append(torch.autograd.grad(loss, leaves))
        for what, got, want in zip("qkv", *grads, strict=True):
            assert not got.isnan().any(), f"d{what}: NaN"
            assert_close(got, want.float(), *tolerances.backward(torch.float32), what=f"d{what} {sq}x{sk}")


def test_sparse_calls_it_does_not_serve():
    """Per-batch predicate masks go to portable, with the reason said; gradients stay here."""
    q = torch.randn(1, 32, 2, 16, requires_grad=True)
    info = portattn.explain(q, q, q, sparsity=sparse.bigbird(4, 1, 1, block=16), quiet=True)
    assert info.chosen == "triton_hopper", str(info)
    mask = sparse.block_mask(lambda b, h, i, j: i >= j, 32, 32, block=16)
    row = next(r for r in portattn.explain(q.detach(), q.detach(), q.detach(), sparsity=mask, quiet=True).rows
               if r.name == "triton_hopper")  # fmt: skip
    assert any("block_mask" in r for r in row.reasons), row.reasons
    union = mask | sparse.sliding_window(2, 2, block=16)
    row = next(r for r in portattn.explain(q.detach(), q.detach(), q.detach(), sparsity=union, quiet=True).rows
               if r.name == "triton_hopper")  # fmt: skip
    assert any("block_mask inside" in r for r in row.reasons), row.reasons
