"""Dynamic patterns (``sparse.qk_drop``, ``sparse.hash_buckets``): compaction (``portattn/_dynamic.py``)
must give the dense mask's semantics, forward and gradients, and the interval spans the kernels walk
must cover every visible key and leave unmasked only what every row sees."""

from __future__ import annotations

import pytest
import torch

import portattn
from portattn import sparse
from portattn.backends.reference.naive import attention_reference
from portattn.testing import assert_close, tolerances


def _patterns(gen, b, sq, sk, hq, hk):
    return {
        "qk_drop": sparse.qk_drop(torch.rand(b, sq, hq, generator=gen) < 0.5,
                                  torch.rand(b, sk, hk, generator=gen) < 0.5),  # fmt: skip
        "qk_drop shared heads": sparse.qk_drop(torch.rand(b, sq, 1, generator=gen) < 0.7,
                                               torch.rand(b, sk, 1, generator=gen) < 0.3),  # fmt: skip
        "hash_buckets": sparse.hash_buckets(torch.randint(0, 4, (b, sq, hq), generator=gen),
                                            torch.randint(0, 4, (b, sk, hk), generator=gen)),  # fmt: skip
        "hash_buckets sparse ids": sparse.hash_buckets(torch.randint(-5, 9, (b, sq, hq), generator=gen) * 1000,
                                                       torch.randint(-5, 9, (b, sk, hk), generator=gen) * 1000),
    }  # fmt: skip


SHAPES = [(2, 37, 45, 4, 2), (1, 64, 64, 2, 2), (1, 50, 20, 3, 1)]
BANDS = [dict(causal=False), dict(causal=True), dict(window=(7, 3)), dict(causal=True, window=(10, 0))]


def _dense_reference(q, k, v, pattern, band):
    b, sq, hq, _ = q.shape
    mask = pattern.allowed_mask(b, hq, sq, k.shape[1], q.device)
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    call = portattn.explain(q, k, v, sparsity=sparse.dense_mask(mask), return_lse=True, quiet=True, **band).call
    out, lse = attention_reference(call, *exact)
    return exact, out, lse


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("band", BANDS, ids=str)
@pytest.mark.parametrize("backend", ["portable", "reference"])
def test_dynamic_patterns_match_the_dense_mask(shape, band, backend):
    b, sq, sk, hq, hk = shape
    gen = torch.Generator().manual_seed(sq * sk)
    q, k, v = torch.randn(b, sq, hq, 16, generator=gen), torch.randn(b, sk, hk, 16, generator=gen), None
    v = torch.randn(b, sk, hk, 16, generator=gen)
    dout = torch.randn(b, sq, hq, 16, generator=gen)
    for name, pattern in _patterns(gen, b, sq, sk, hq, hk).items():
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, lse = portattn.attention(*leaves, sparsity=pattern, backend=backend, return_lse=True, **band)
        exact, ref, ref_lse = _dense_reference(q, k, v, pattern, band)
        assert_close(out, ref.float(), *tolerances.forward(torch.float32), what=f"{name} out")
        assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), f"{name}: dropped rows have lse -inf"
        assert torch.all(out.transpose(1, 2)[torch.isinf(lse)] == 0), f"{name}: dropped queries output 0"
        got = torch.autograd.grad(out, leaves, dout)
        want = torch.autograd.grad(ref, exact, dout.double())
        for what, g, w in zip("qkv", got, want, strict=True):
            assert_close(g, w.float(), *tolerances.backward(torch.float32), what=f"{name} d{what}")


def test_dynamic_patterns_reject_what_they_cannot_take():
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(TypeError, match="q_keep"):
        sparse.qk_drop(torch.ones(1, 8, 2), torch.ones(1, 8, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="k_buckets"):
        sparse.hash_buckets(torch.zeros(1, 8, 2, dtype=torch.long), torch.zeros(1, 8, 2))
    keep = torch.ones(1, 8, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="query tensor"):
        portattn.attention(q, q, q, sparsity=sparse.qk_drop(keep[:, :5], keep))
    with pytest.raises(ValueError, match="key/value heads"):
        portattn.attention(q, q[:, :, :1], q[:, :, :1], sparsity=sparse.qk_drop(keep, keep))
    with pytest.raises(ValueError, match="precision"):
        qb = q.bfloat16()
        portattn.attention(qb, qb, qb, sparsity=sparse.qk_drop(keep, keep), precision="fp8")


def test_explain_shows_the_compacted_call():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 40, 2, 16, generator=gen)
    keep = torch.zeros(1, 40, 2, dtype=torch.bool)
    keep[:, ::4] = True
    info = portattn.explain(q, q, q, causal=True, sparsity=sparse.qk_drop(keep, keep), quiet=True)
    assert info.call.seqlen_q == 10 and info.call.seqlen_k == 10 and info.call.sparsity.kind == "interval"


@pytest.mark.parametrize("seed", range(6))
def test_interval_spans_cover_exactly(seed):
    """The forward/dQ spans and the dK/dV row spans of random compactions, against brute force: every
    visible (row, key) pair lies inside its block's span, and the unmasked middle is all visible."""
    pytest.importorskip("triton")
    from portattn import _dynamic
    from portattn.backends.triton_hopper import launch

    gen = torch.Generator().manual_seed(seed)
    b, sq, sk, hq, hk = 1, 70 + seed * 9, 90 - seed * 7, 4, 2
    q, k = torch.randn(b, sq, hq, 16), torch.randn(b, sk, hk, 16)
    patterns = list(_patterns(gen, b, sq, sk, hq, hk).values())
    unmasked = skipped = 0  # the spans must do something: some blocks unmasked, some keys never visited
    for pattern in patterns:
        _, plan, qc, kc, _ = _dynamic.compacted_call(
            q,
            k,
            k,
            pattern=pattern,
            causal=seed % 2 == 0,
            window=None,
            scale=None,
            softcap=None,
            return_lse=False,
            top_left=False,
        )
        mask = plan.mask
        allowed = mask.allowed_mask(b, hq, qc.shape[1], kc.shape[1], "cpu")[0]  # (heads, rows, keys)
        rows, keys = allowed.shape[1:]
        for bm, bn in ((16, 16), (32, 16), (16, 64)):
            spans = launch._interval_spans(mask, bm, bn).view(hq, -1, 4)
            for h in range(hq):
                for m in range(spans.shape[1]):
                    first, full_first, full_last, last = spans[h, m].tolist()
                    tile = allowed[h, m * bm : (m + 1) * bm]
                    seen = tile.any(0).nonzero().flatten()
                    if len(seen):
                        assert first <= seen.min() and seen.max() < last
                    assert first % bn == 0 and (full_last - full_first) % bn == 0
                    assert tile[:, full_first:full_last].all()
                    unmasked += full_last > full_first
                    skipped += first + (keys - min(last, keys)) >= bn
            row_spans = launch._interval_row_spans(mask, bm, bn).view(hq, -1, 4)
            for h in range(hq):
                for n in range(row_spans.shape[1]):
                    first, full_first, full_last, last = row_spans[h, n].tolist()
                    tile = allowed[h, :, n * bn : (n + 1) * bn]
                    seen = tile.any(1).nonzero().flatten()
                    if len(seen):
                        assert first <= seen.min() and seen.max() < last
                    full = tile[full_first:full_last]
                    assert full.all() and (full_first == full_last or (n + 1) * bn <= keys), (h, n)
                    assert last <= rows
    assert unmasked > 0 and skipped > 0, (unmasked, skipped)
