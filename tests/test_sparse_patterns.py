"""Static block patterns (``portattn.sparse``): each pattern's mask against a brute-force definition,
its block states and lists against its mask, and the patterns through ``portable`` and ``reference``
(forward and gradients, causal AND pattern, rows that see no key)."""

from __future__ import annotations

import time

import pytest
import torch

import portattn
from portattn import _api, sparse
from portattn.backends.reference.naive import attention_reference
from portattn.sparse.blocks import EMPTY, FULL, PARTIAL
from portattn.testing import assert_close


def _window(sq, sk, left, right):
    off = sk - sq
    return torch.tensor([[(left == -1 or j - i - off >= -left) and (right == -1 or j - i - off <= right)
                          for j in range(sk)] for i in range(sq)])  # fmt: skip


def _global(sq, sk, idx):
    return torch.tensor([[i in idx or j in idx for j in range(sk)] for i in range(sq)])


def _doc_fn(docs):
    """A per-batch document mask: tokens see their own document only (docs: (batch, seqlen) ids)."""
    return lambda b, h, i, j: docs[b, i] == docs[b, j]


SHAPES = [(50, 70), (64, 64), (33, 17), (130, 129)]


def _patterns(sq, sk):
    docs = torch.randint(0, 3, (2, max(sq, sk)), generator=torch.Generator().manual_seed(sq)).sort(dim=1).values
    cases = [
        (sparse.sliding_window(5, 3, block=16), _window(sq, sk, 5, 3)),
        (sparse.sliding_window(-1, 0, block=16), _window(sq, sk, -1, 0)),
        (sparse.global_tokens(3, block=16), _global(sq, sk, {0, 1, 2})),
        (sparse.global_tokens([5, 40, 16], block=16), _global(sq, sk, {5, 40, 16})),
        (sparse.sliding_window(2, 2, block=16) | sparse.global_tokens(1, block=16),
         _window(sq, sk, 2, 2) | _global(sq, sk, {0})),
        (sparse.sliding_window(20, 20, block=16) & sparse.sliding_window(-1, 0, block=16),
         _window(sq, sk, 20, 20) & _window(sq, sk, -1, 0)),
    ]  # fmt: skip
    mask = sparse.block_mask(_doc_fn(docs), sq, sk, block=16)
    want = torch.stack([torch.tensor([[bool(docs[b, i] == docs[b, j]) for j in range(sk)] for i in range(sq)])
                        for b in range(2)])[:, None]  # fmt: skip
    cases.append((mask, want))
    return cases


def _check_states(pattern, sq, sk, mask, exact: bool):
    """FULL tiles are wholly allowed, EMPTY ones wholly masked; with ``exact``, PARTIAL ones mixed."""
    states = pattern.block_states(sq, sk)
    blk = pattern.block
    full_mask = mask.reshape(-1, sq, sk)
    for m in range(states.shape[0]):
        for n in range(states.shape[1]):
            tile = full_mask[:, m * blk : (m + 1) * blk, n * blk : (n + 1) * blk]
            if states[m, n] == FULL:
                assert tile.all(), (m, n)
            elif states[m, n] == EMPTY:
                assert not tile.any(), (m, n)
            elif exact:
                assert tile.any() and not tile.all(), (m, n)
    lists = pattern.block_lists(sq, sk)
    for m in range(states.shape[0]):
        visible = [n for n in range(states.shape[1]) if states[m, n] != EMPTY]
        assert lists.kv_index[m, : lists.kv_count[m]].tolist() == visible
        assert lists.kv_full[m, : lists.kv_count[m]].tolist() == [bool(states[m, n] == FULL) for n in visible]
    for n in range(states.shape[1]):
        visible = [m for m in range(states.shape[0]) if states[m, n] != EMPTY]
        assert lists.q_index[n, : lists.q_count[n]].tolist() == visible


@pytest.mark.parametrize("sq,sk", SHAPES)
def test_masks_and_block_states(sq, sk):
    for pattern, want in _patterns(sq, sk):
        pattern.validate(2, 2, sq, sk)
        got = pattern.allowed_mask(2, 2, sq, sk, torch.device("cpu")).expand(2, 2, sq, sk)
        want = want if want.dim() == 4 else want[None, None]
        assert torch.equal(got, want.expand(2, 2, sq, sk)), pattern
        exact = pattern.kind in ("sliding_window", "global_tokens")
        _check_states(pattern, sq, sk, got, exact)


def test_random_blocks_are_reproducible_and_counted():
    a, b = sparse.random_blocks(2, seed=7, block=16), sparse.random_blocks(2, seed=7, block=16)
    sa = a.block_states(100, 90)
    assert torch.equal(sa, b.block_states(100, 90))
    assert ((sa == FULL).sum(1) == 2).all() and not (sa == PARTIAL).any()
    assert not torch.equal(sa, sparse.random_blocks(2, seed=8, block=16).block_states(100, 90))
    mask = a.allowed_mask(1, 1, 100, 90, torch.device("cpu"))[0, 0]
    _check_states(a, 100, 90, mask, exact=True)


def _attention_case(pattern, sq, sk, causal, backend, hq=4, hkv=2, d=16):
    gen = torch.Generator().manual_seed(sq * 1000 + sk)
    q = torch.randn(2, sq, hq, d, generator=gen, requires_grad=True)
    k = torch.randn(2, sk, hkv, d, generator=gen, requires_grad=True)
    v = torch.randn(2, sk, hkv, d, generator=gen, requires_grad=True)
    out, lse = portattn.attention(q, k, v, causal=causal, sparsity=pattern, backend=backend, return_lse=True)
    dout = torch.randn(out.shape, generator=gen)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    call = portattn.explain(q, k, v, causal=causal, sparsity=pattern, quiet=True).call
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = attention_reference(call, *leaves)
    ref_grads = torch.autograd.grad(ref_out, leaves, dout.double())
    assert_close(out, ref_out, 2e-5, 2e-5)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    for g, w in zip(grads, ref_grads, strict=True):
        assert not torch.isnan(g).any()
        assert_close(g, w, 1e-4, 1e-4, what="grad")
    return lse


@pytest.mark.parametrize("backend", ["portable", "reference"])
@pytest.mark.parametrize("causal", [False, True])
def test_patterns_through_backends(backend, causal):
    """Every pattern, AND causal, forward and gradients against the float64 reference."""
    for sq, sk in [(50, 70), (70, 33)]:
        for pattern, _ in _patterns(sq, sk):
            _attention_case(pattern, sq, sk, causal, backend)
        big = sparse.bigbird(3, 2, 1, seed=1, block=16)
        _attention_case(big, sq, sk, causal, backend)


def test_rows_that_see_no_key():
    """A window that ends before the keys start leaves rows empty: output 0, lse -inf, no NaN."""
    pattern = sparse.sliding_window(0, 0, block=16) & sparse.global_tokens([60], block=16)
    lse = _attention_case(pattern, 40, 40, False, "portable")
    assert torch.isinf(lse).any()


def test_build_for_128k_tokens_is_fast_and_small():
    """States come from block arithmetic: 1024 x 1024 tiles, never a seqlen x seqlen tensor."""
    n = 131072
    start = time.perf_counter()
    pattern = sparse.bigbird(512, 128, 3)
    density = pattern.density(n, n)
    lists = pattern.block_lists(n, n)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, elapsed
    assert lists.kv_index.shape[0] == 1024 and 0 < density < 0.02
    assert pattern.block_states(n, n).numel() == 1024 * 1024


def test_explain_shows_density():
    q = torch.randn(1, 256, 2, 16)
    text = str(portattn.explain(q, q, q, sparsity=sparse.bigbird(16, 16, 1, block=16), quiet=True))
    assert "sparsity=bigbird (" in text and "% of blocks)" in text


def test_bad_patterns_are_refused():
    with pytest.raises(ValueError, match="block"):
        sparse.sliding_window(1, 1, block=24)
    with pytest.raises(ValueError, match="left"):
        sparse.sliding_window(-2, 1)
    with pytest.raises(ValueError, match="share a block size"):
        sparse.sliding_window(1, 1, block=16) | sparse.global_tokens(1, block=32)
    with pytest.raises(ValueError, match="per_row"):
        sparse.random_blocks(-1)
    q = torch.randn(1, 20, 1, 16)
    with pytest.raises(ValueError, match="block_mask was built for"):
        portattn.attention(q, q, q, sparsity=sparse.block_mask(lambda b, h, i, j: i >= j, 10, 20))
    with pytest.raises(TypeError, match="callable"):
        sparse.block_mask(3, 10, 10)


def test_a_window_pattern_runs_as_a_band():
    """``sliding_window`` alone folds into the call's band (the kernels' band path, no tile masks)."""
    q = torch.randn(1, 40, 1, 16)
    k = torch.randn(1, 50, 1, 16)
    call = portattn.explain(q, k, k, causal=True, sparsity=sparse.sliding_window(7, 3), quiet=True).call
    assert call.sparsity is None and call.band == (10 - 7, 10)  # off = 10: lo = off - 7, hi = min(off, off + 3)
    window = sparse.sliding_window(7, 3)
    for _ in range(2):  # the second call comes from the decision cache: still folded
        got = _api.resolve(q, k, k, causal=True, window=None, scale=None, softcap=None, sparsity=window, bias=None,
                           precision=None, return_lse=False, backend=None, top_left=False)[0]  # fmt: skip
        assert got.sparsity is None and got.band == (3, 10)
    both = sparse.sliding_window(7, 3) | sparse.global_tokens(1)  # a combination stays a pattern
    assert portattn.explain(q, k, k, sparsity=both, quiet=True).call.sparsity is not None


@pytest.mark.parametrize("causal", [False, True])
def test_pattern_walks_list_exactly_the_visible_tiles(causal):
    """``triton_hopper``'s walk lists (``launch._pattern_walk``), against brute force from the pattern's
    element mask and the band: every visible (query, key) pair lies in a listed tile, no tile twice;
    tiles listed as unmasked are wholly visible and inside the lengths; a masked tile's element mask is
    its pattern tile's; and the programs run heaviest first."""
    pytest.importorskip("triton")
    from portattn.backends.triton_hopper import launch

    sq, sk, pb = 300, 330, 32
    q, k = torch.randn(1, sq, 1, 16), torch.randn(1, sk, 1, 16)
    pattern = sparse.bigbird(40, 16, 1, block=pb)
    call = portattn.explain(q, k, k, causal=causal, sparsity=pattern, quiet=True).call
    lo, hi = call.band
    rel = torch.arange(sk)[None, :] - torch.arange(sq)[:, None]
    element = pattern.allowed_mask(1, 1, sq, sk, torch.device("cpu"))[0, 0]
    allowed = element.clone()
    if lo is not None:
        allowed &= rel >= lo
    if hi is not None:
        allowed &= rel <= hi
    plain_seen = masked_seen = 0
    for axis, block, other_block in (("q", 16, 32), ("q", 32, 16), ("k", 16, 32), ("k", 32, 16)):
        walk, starts, numbers, masks, order = launch._pattern_walk(call, axis, block, other_block, torch.device("cpu"))
        view = allowed if axis == "q" else allowed.t()  # (this axis, the other)
        length, other = view.shape
        n = -(-length // block)
        assert walk.shape == (n, 3) and sorted(order.tolist()) == list(range(n))
        work = []
        for x in range(n):
            begin, n_masked, n_plain = walk[x].tolist()
            tiles = starts[begin : begin + n_masked + n_plain].tolist()
            assert len(set(tiles)) == len(tiles) and all(t % other_block == 0 for t in tiles)
            rows = view[x * block : (x + 1) * block]
            needed = {c // other_block * other_block for c in rows.any(0).nonzero().flatten().tolist()}
            assert needed <= set(tiles), (axis, x)
            for i, t in enumerate(tiles):
                number = int(numbers[begin + i])
                if i >= n_masked:  # unmasked: wholly visible, inside the lengths, a full pattern tile
                    assert number == -1 and t + other_block <= other and bool(rows[:, t : t + other_block].all())
                    plain_seen += 1
                elif number >= 0:
                    r0, c0 = (x * block, t) if axis == "q" else (t, x * block)
                    tile = masks[number].bool()
                    b0, b1 = r0 // pb * pb, c0 // pb * pb
                    want = element[b0 : b0 + pb, b1 : b1 + pb]
                    assert torch.equal(tile[: want.shape[0], : want.shape[1]], want)
                    masked_seen += 1
                else:  # masked by the band or the length only: the pattern tile is full
                    r0, c0 = (x * block, t) if axis == "q" else (t, x * block)
                    b0, b1 = r0 // pb * pb, c0 // pb * pb
                    assert bool(element[b0 : b0 + pb, b1 : b1 + pb].all()), (axis, x, t)
            work.append(n_masked + n_plain)
        ranked = [work[x] for x in order.tolist()]
        assert ranked == sorted(work, reverse=True) and ranked[0] > ranked[-1], (axis, block, work)
    assert plain_seen and masked_seen
