"""KV offload's core (``portattn/_offload.py``) on the CPU: the chunk loop, the LSE merge, the band
shift, chunk skipping and the memory budget, against the float64 reference. The streams and the
overlap run on a GPU (``tests/test_gpu.py::test_kv_offload*``)."""

from __future__ import annotations

import pytest
import torch

from portattn import _api, _call, _offload
from portattn.testing.assertions import assert_close

CASES = [
    dict(batch=2, seqlen_q=37, seqlen_k=101, heads_q=4, heads_kv=2, causal=True),
    dict(batch=1, seqlen_q=90, seqlen_k=23, heads_q=2, heads_kv=2, causal=True),  # rows that see no key
    dict(batch=1, seqlen_q=64, seqlen_k=200, heads_q=3, heads_kv=1, window=(20, 5)),
    dict(batch=2, seqlen_q=17, seqlen_k=77, heads_q=2, heads_kv=1, softcap=5.0),
]


def _inputs(batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seqlen_q, heads_q, head_dim, generator=gen, dtype=torch.float64)
    k = torch.randn(batch, seqlen_k, heads_kv, head_dim, generator=gen, dtype=torch.float64)
    v = torch.randn(batch, seqlen_k, heads_kv, head_dim + 3, generator=gen, dtype=torch.float64)  # head_dim_v
    return q.float(), k.float(), v.float()


def _call_of(q, k, v, causal=False, window=None, softcap=None):
    return _call.normalize(q, k, v, causal=causal, window=window, scale=None, softcap=softcap, sparsity=None,
                           bias=None, precision=None, return_lse=True, top_left=False, requires_grad=False)  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("chunk", [7, 32, 1000])
def test_stream_forward_matches_reference(case, chunk):
    """Chunk by chunk (band shifted to each chunk's keys), merged by LSE = the whole call at once."""
    opts = {n: case.pop(n) for n in ("causal", "window", "softcap") if n in case}
    q, k, v = _inputs(**case)
    call = _call_of(q, k, v, **opts)
    parts = []

    def chunk_forward(k_dev, v_dev, band):
        parts.append(k_dev.shape[1])
        return _api.run(q, k_dev, v_dev, band=band, scale=call.scale, softcap=call.softcap, return_lse=True,
                        backend="reference")  # fmt: skip

    out, lse = _offload.stream_forward(call, q, k, v, chunk_forward, chunk=chunk)
    ref_out, ref_lse = _api.run(q, k, v, return_lse=True, backend="reference", **opts)
    assert_close(out, ref_out, 1e-5, 1e-5)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "rows with no visible key must have lse -inf"
    finite = torch.isfinite(ref_lse)
    assert_close(lse[finite], ref_lse[finite], 1e-5, 1e-5, what="lse")
    assert sum(parts) <= call.seqlen_k and max(parts) <= chunk
    if chunk < call.seqlen_k:
        assert len(parts) > 1, "the loop must have streamed several chunks"


def test_chunks_no_row_can_see_are_skipped():
    """Causal with few queries at the end: keys beyond the last row's reach are never moved."""
    q, k, v = _inputs(1, 10, 100, 1, 1)
    call = _call_of(q, k, v, causal=True)  # band hi = 90: every key visible to the last row
    assert _offload.visible_chunks(call, 16) == [(s, min(s + 16, 100)) for s in range(0, 100, 16)]
    window = _call_of(q, k, v, causal=True, window=(5, 0))  # rows see keys 85..99 only
    assert _offload.visible_chunks(window, 16) == [(80, 96), (96, 100)]
    none = _call_of(*_inputs(1, 50, 10, 1, 1), causal=True)  # seqlen_q > seqlen_k: early rows see nothing
    assert _offload.visible_chunks(none, 4) == [(0, 4), (4, 8), (8, 10)]


def test_lse_merge_of_empty_parts():
    """A part in which a row sees no key (out 0, lse -inf) leaves that row's result unchanged; a row that
    sees no key in any part comes out 0 with lse -inf, never NaN."""
    out = torch.randn(1, 3, 1, 4)
    lse = torch.tensor([[[0.5, float("-inf"), 2.0]]])
    empty_out, empty_lse = torch.zeros_like(out), torch.full_like(lse, float("-inf"))
    merge = _offload.LseMerge()
    merge.add(empty_out, empty_lse)
    merge.add(out, lse)
    merge.add(empty_out, empty_lse)
    got, got_lse = merge.result(torch.float32)
    assert not torch.isnan(got).any() and not torch.isnan(got_lse).any()
    assert torch.equal(got_lse, lse)
    assert_close(got[:, [0, 2]], out[:, [0, 2]], 1e-6, 1e-6)
    assert torch.equal(got[:, 1], torch.zeros_like(got[:, 1]))


def test_chunk_keys_fit_the_budget():
    q, k, v = _inputs(2, 8, 100_000, 8, 4, head_dim=64)
    call = _call_of(q, k, v)
    per_key = 2 * 2 * 4 * (64 + 67) * 4  # two slots, batch 2, 4 kv heads, k and v dims, float32
    for budget in (10 << 20, 100 << 20, 123_456_789):
        keys = _offload.chunk_keys(call, budget)
        assert keys % _offload.CHUNK_ALIGN == 0 and keys * per_key <= budget
        assert (keys + _offload.CHUNK_ALIGN) * per_key > budget, "the chunk should use the budget"
    small = _offload.chunk_keys(call, 1 << 20)  # under one aligned chunk: multiples of 16 keys
    assert small % 16 == 0 and small * per_key <= 1 << 20 < (small + 16) * per_key
    assert _offload.chunk_keys(call, 1) == 16  # never zero keys
    assert _offload.chunk_keys(call, 1 << 40) == 100_096  # seqlen_k rounded up, not the whole budget


def test_budget_setting(monkeypatch):
    monkeypatch.delenv(_offload.BUDGET_ENV, raising=False)
    assert _offload.budget_bytes() == _offload.DEFAULT_BUDGET
    monkeypatch.setenv(_offload.BUDGET_ENV, "512MiB")
    assert _offload.budget_bytes() == 512 << 20
    import portattn

    with portattn.kv_budget(3 << 20):  # the context manager wins over the environment
        assert _offload.budget_bytes() == 3 << 20
    assert _offload.budget_bytes() == 512 << 20
    assert [_offload.parse_bytes(t) for t in ("1000", "2G", "1.5k", "4 MB")] == [1000, 2 << 30, 1536, 4 << 20]
    with pytest.raises(ValueError, match=_offload.BUDGET_ENV):
        _offload.parse_bytes("lots")
    with pytest.raises(ValueError, match="kv_budget"), portattn.kv_budget(0):
        pass


def test_offload_refuses_what_it_cannot_stream():
    """Offload is a forward of plain attention: gradients, masks, bias and FP8 get a clear error."""
    _call._check_offload(False, None, None, None)
    with pytest.raises(ValueError, match="forward only"):
        _call._check_offload(True, None, None, None)
    for kwargs, name in ((dict(sparsity=object()), "sparsity"), (dict(precision="fp8"), "precision")):
        args = dict(requires_grad=False, sparsity=None, bias=None, precision=None) | kwargs
        with pytest.raises(ValueError, match=name):
            _call._check_offload(**args)


def test_backends_declaring_offload():
    """The core drives any backend that declares the feature; these do."""
    from portattn import _registry

    reg = _registry.get()
    for name in ("triton_hopper", "cuda_volta", "portable"):
        assert _call.KV_OFFLOAD in reg.entries[name].backend.capabilities.features, name
    assert _call.KV_OFFLOAD not in reg.entries["reference"].backend.capabilities.features
