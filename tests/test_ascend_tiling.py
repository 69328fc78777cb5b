"""The ``ascend`` backend's two-level tiling path on the CPU: conformance vs the float64 reference, and
proof that stacks hidden by the mask are skipped and that stacks are cut into inner matmul tiles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from portattn import _call, sparse
from portattn._backend import Backend
from portattn.backends.ascend import tiling
from portattn.backends.portable import PortableBackend
from portattn.testing import default_cases, run_case
from portattn.testing.cases import Case


class TilingBackend(Backend):
    """Only the two-level tiling path, with the given tile sizes (test double, not registered)."""

    name = "ascend-tiling"
    priority = 0
    capabilities = PortableBackend.capabilities

    def __init__(self, q_tile: int = 128, kv_stack: int = 512, inner: int = 128) -> None:
        self.tiles = {"q_tile": q_tile, "kv_stack": kv_stack, "inner": inner}

    def forward(self, call, q, k, v):
        return tiling.forward(call, q, k, v, **self.tiles)

    def backward(self, call, q, k, v, out, lse, dout, dlse=None):
        return tiling.backward(call, q, k, v, out, lse, dout, dlse, **self.tiles)


# small tiles: every case crosses query-tile, stack and inner-tile boundaries (stacks of 32 = 4 x 8 keys)
SMALL = TilingBackend(q_tile=16, kv_stack=32, inner=8)
# inner not dividing the stack: ragged last inner tile in every stack
RAGGED = TilingBackend(q_tile=8, kv_stack=20, inner=6)
DEFAULT = TilingBackend()
BACKENDS = {"tiles16x32x8": SMALL, "tiles8x20x6": RAGGED, "default": DEFAULT}

CASES = default_cases("quick") + [
    # bands far narrower than the sequence: most stacks lie outside the band and are never visited
    Case(batch=1, seqlen_q=100, seqlen_k=150, heads_q=2, heads_kv=1, window=(20, 0)),
    Case(batch=1, seqlen_q=130, seqlen_k=70, heads_q=2, heads_kv=2, causal=True),
    Case(batch=1, seqlen_q=90, seqlen_k=90, heads_q=3, heads_kv=1, mask="empty_rows", tags=("sparsity",)),
    Case(batch=1, seqlen_q=64, seqlen_k=96, heads_q=2, heads_kv=2, softcap=5.0, window=(40, 10)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.name for c in CASES])
@pytest.mark.parametrize("tiles", list(BACKENDS), ids=list(BACKENDS))
def test_conformance(tiles, index, dtype):
    result = run_case(BACKENDS[tiles], CASES[index], dtype=dtype, seed=index)
    result.raise_for_failure()
    assert result.status == "pass", result.message
    assert {"out", "lse", "dq", "dk", "dv"} <= set(result.errors)


# --- skipping and inner tiles, observed on the matmuls themselves ------------------------------------

S, H, D = 128, 2, 16  # batch 1, float32 contiguous: K/V tiles are views of k/v, so offsets give keys
Q_TILE, STACK, INNER = 16, 32, 8
DEAD = (32, 64)  # a stack no query may see
LATE = (96, 128)  # a stack only query rows >= 64 may see


def _mask(skipping: bool = True) -> torch.Tensor:
    allowed = torch.rand(S, S, generator=torch.Generator().manual_seed(3)) < 0.7
    allowed[:, :8] = True  # every row sees something
    if skipping:
        allowed[:, DEAD[0] : DEAD[1]] = False
        allowed[:64, LATE[0] : LATE[1]] = False
    return allowed


def _key_span(t: torch.Tensor, base: torch.Tensor) -> tuple[int, int] | None:
    """Keys ``[first, last + 1)`` that ``t`` reads when it is a view of ``base (1, S, H, D)``, else None."""
    if t.untyped_storage().data_ptr() != base.untyped_storage().data_ptr():
        return None
    lo = t.storage_offset() - base.storage_offset()
    hi = lo + sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True))
    per_key = base.stride(1)
    return lo // per_key, hi // per_key + 1


class _BmmSpy:
    """Wraps ``torch.bmm``; records the key spans of k and v read by each call."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v, self.calls = k, v, []
        self.real = torch.bmm

    def __call__(self, a, b, *args, **kwargs):
        spans = {name: _key_span(t, base) for name, base in (("k", self.k), ("v", self.v)) for t in (a, b)}
        self.calls.append({n: s for n, s in spans.items() if s is not None})
        return self.real(a, b, *args, **kwargs)

    def spans(self, name: str) -> list[tuple[int, int]]:
        return [c[name] for c in self.calls if name in c]


def _run(monkeypatch, allowed: torch.Tensor, backward: bool):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, S, H, D, generator=gen) for _ in range(3))
    call = _call.normalize(
        q, k, v, bias=None, precision=None, return_lse=True, top_left=False, scale=None,
        sparsity=sparse.dense_mask(allowed), causal=False, window=None, softcap=None,
    )  # fmt: skip
    tiles = {"q_tile": Q_TILE, "kv_stack": STACK, "inner": INNER}
    out, lse = tiling.forward(call, q, k, v, **tiles)
    dout = torch.randn(out.shape, generator=gen)
    spy = _BmmSpy(k, v)
    monkeypatch.setattr(torch, "bmm", spy)
    if backward:
        grads = tiling.backward(call, q, k, v, out, lse, dout, None, **tiles)
    else:
        grads = None
        out, lse = tiling.forward(call, q, k, v, **tiles)
    monkeypatch.setattr(torch, "bmm", spy.real)
    return spy, (q, k, v, dout), out, grads


def _overlaps(span: tuple[int, int], keys: tuple[int, int]) -> bool:
    return span[0] < keys[1] and keys[0] < span[1]


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_masked_stacks_are_skipped(monkeypatch, backward):
    spy, (q, k, v, dout), out, grads = _run(monkeypatch, _mask(), backward)
    k_spans = spy.spans("k")
    assert k_spans, "the spy saw no matmul reading k: the check would be vacuous"
    # the fully hidden stack is never read, neither its keys nor its values
    assert not [s for s in k_spans + spy.spans("v") if _overlaps(s, DEAD)]
    # second level: no matmul reads more than `inner` keys of k
    assert max(e - s for s, e in k_spans) <= INNER
    if not backward:
        # the stack visible only to rows >= 64 is computed for exactly those 4 query tiles, in 4 inner tiles
        late = [s for s in k_spans if _overlaps(s, LATE)]
        assert len(late) == (S - 64) // Q_TILE * (STACK // INNER)
        # every other key is read, each inner tile once per query tile
        covered = {key for s, e in k_spans for key in range(s, e)}
        assert covered == set(range(S)) - set(range(*DEAD))
        assert len(k_spans) == (S // Q_TILE) * (S - 2 * STACK) // INNER + len(late)

    # and the results are right: float64 SDPA with the same mask
    allowed = _mask()
    leaves = [t.double().transpose(1, 2).requires_grad_(True) for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*leaves, attn_mask=allowed)
    if backward:
        want = torch.autograd.grad(ref, leaves, dout.double().transpose(1, 2))
        for got, w in zip(grads, want, strict=True):
            torch.testing.assert_close(got.double(), w.transpose(1, 2), atol=1e-4, rtol=1e-4)
    else:
        torch.testing.assert_close(out.double(), ref.transpose(1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_the_spy_sees_unskipped_stacks(monkeypatch, backward):
    """Control: with nothing masked the same spy does see the stack, so the test above can fail."""
    spy, *_ = _run(monkeypatch, _mask(skipping=False), backward)
    assert [s for s in spy.spans("k") if _overlaps(s, DEAD)]
    if backward:  # (forward reads V with baddbmm_ after a query tile's first stack, which the spy skips)
        assert [s for s in spy.spans("v") if _overlaps(s, DEAD)]


def test_default_portable_issues_one_matmul_per_tile(monkeypatch):
    """``inner_k=None`` (portable's default) keeps one score matmul per tile."""
    spy, *_ = _run(monkeypatch, _mask(skipping=False), backward=False)
    n_inner = len(spy.spans("k"))
    from portattn.backends.portable import tiled

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, S, H, D, generator=gen) for _ in range(3))
    call = _call.normalize(
        q, k, v, bias=None, precision=None, return_lse=True, top_left=False, scale=None,
        sparsity=None, causal=False, window=None, softcap=None,
    )  # fmt: skip
    spy = _BmmSpy(k, v)
    monkeypatch.setattr(torch, "bmm", spy)
    tiled.forward(call, q, k, v, Q_TILE, STACK)
    monkeypatch.setattr(torch, "bmm", spy.real)
    assert len(spy.spans("k")) == (S // Q_TILE) * (S // STACK) == n_inner // (STACK // INNER)


def test_tiling_docstring_and_defaults():
    assert "Cube" in tiling.__doc__ and "Vector" in tiling.__doc__ and "any torch device" in tiling.__doc__
    assert (tiling.Q_TILE, tiling.KV_STACK, tiling.INNER) == (128, 512, 128)
