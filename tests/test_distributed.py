"""``portattn.distributed``: LSE merging of partial results, and the tiling-AllReduce over gloo on the CPU.

The multi-process tests start real gloo process groups (loopback only, file rendezvous in tmp_path);
every process is joined with a timeout and terminated if it hangs, so a failure cannot hang CI.
"""

from __future__ import annotations

import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import portattn
from portattn.distributed import merge_partials, tiling_allreduce
from portattn.sparse import dense_mask

ATOL = 1e-5

# (name, kwargs, seqlen_q, seqlen_k, heads_q, heads_kv)
CASES = [
    ("noncausal", {}, 6, 13, 2, 2),
    ("causal_bottom_right", {"causal": True}, 5, 13, 2, 2),
    ("window", {"window": (3, 1), "softcap": 20.0, "scale": 0.3}, 9, 13, 2, 2),
    ("causal_rows_see_nothing", {"causal": True}, 15, 13, 2, 2),  # rows 0, 1 see no key at all
    ("gqa_causal_window", {"causal": True, "window": (4, -1)}, 7, 13, 4, 2),
]
# shard boundaries over seqlen_k = 13: uneven, and an empty shard for 4 ranks
BOUNDS = {2: [0, 4, 13], 4: [0, 3, 3, 9, 13]}


def _chunks(seqlen: int, parts: int, gen: torch.Generator) -> list[tuple[int, int]]:
    cuts = sorted(torch.randperm(seqlen - 1, generator=gen)[: parts - 1].add(1).tolist())
    edges = [0, *cuts, seqlen]
    return list(zip(edges[:-1], edges[1:], strict=True))


@pytest.mark.parametrize("parts", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_merge_partials_matches_one_call(parts: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    b, sq, sk, h, d, dv = 2, 7, 16, 3, 8, 6
    q = torch.randn(b, sq, h, d, generator=gen)
    k = torch.randn(b, sk, h, d, generator=gen)
    v = torch.randn(b, sk, h, dv, generator=gen)
    chunks = _chunks(sk, parts, gen)
    mask = torch.rand(b, h, sq, sk, generator=gen) < 0.7
    mask[:, :, 0] = False  # row 0: no key visible anywhere
    a, e = chunks[0]
    mask[:, :, 1] = False
    mask[:, :, 1, a:e] = True  # row 1: visible only in the first chunk (fully masked in the others)
    mask[0, 1, 2] = False
    mask[0, 1, 2, chunks[-1][0]] = True  # a single visible key, in the last chunk

    outs, lses = [], []
    for a, e in chunks:
        o, lse = portattn.attention(q, k[:, a:e], v[:, a:e], sparsity=dense_mask(mask[..., a:e]), return_lse=True)
        outs.append(o)
        lses.append(lse)
    out, lse = merge_partials(outs, lses)
    ref_out, ref_lse = portattn.attention(q, k, v, sparsity=dense_mask(mask), return_lse=True)

    assert not out.isnan().any() and not lse.isnan().any()
    torch.testing.assert_close(out, ref_out, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=ATOL, rtol=1e-5)
    assert (out[:, 0] == 0).all()
    assert torch.isneginf(lse[:, :, 0]).all()
    assert torch.isfinite(lse[:, :, 1]).all()


def test_merge_partials_all_masked_and_order() -> None:
    b, s, h, dv = 1, 3, 2, 4
    outs = [torch.zeros(b, s, h, dv) for _ in range(3)]
    lses = [torch.full((b, h, s), float("-inf")) for _ in range(3)]
    out, lse = merge_partials(outs, lses)
    assert (out == 0).all() and torch.isneginf(lse).all()

    gen = torch.Generator().manual_seed(3)
    outs = [torch.randn(b, s, h, dv, generator=gen) for _ in range(3)]
    lses = [torch.randn(b, h, s, generator=gen) * 50 for _ in range(3)]
    lses[1][0, 0, 0] = float("-inf")
    out1, lse1 = merge_partials(outs, lses)
    out2, lse2 = merge_partials(outs[::-1], lses[::-1])
    torch.testing.assert_close(out1, out2)
    torch.testing.assert_close(lse1, lse2)


def test_merge_partials_validates() -> None:
    with pytest.raises(ValueError, match="equal length"):
        merge_partials([torch.zeros(1, 2, 1, 3)], [])
    with pytest.raises(ValueError, match="lses\\[0\\]"):
        merge_partials([torch.zeros(1, 2, 1, 3)], [torch.zeros(1, 2, 1)])


def test_tiling_allreduce_validates_before_collectives() -> None:
    q, k, v = torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="kv_offset"):
        tiling_allreduce(q, k, v, kv_offset=5, seqlen_k=8)
    with pytest.raises(ValueError, match="kv_offset"):
        tiling_allreduce(q, k, v, kv_offset=-1, seqlen_k=8)
    with pytest.raises(TypeError, match="seqlen_k"):
        tiling_allreduce(q, k, v, kv_offset=0, seqlen_k=8.0)
    with pytest.raises(ValueError, match="window"):
        tiling_allreduce(q, k, v, kv_offset=0, seqlen_k=8, window=(1, 2, 3))
    with pytest.raises(RuntimeError, match="forward only"):
        tiling_allreduce(q.requires_grad_(), k, v, kv_offset=0, seqlen_k=8)


def _inputs(seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    data = {}
    for name, _, sq, sk, hq, hkv in CASES:
        data[name] = (
            torch.randn(2, sq, hq, 8, generator=gen),
            torch.randn(2, sk, hkv, 8, generator=gen),
            torch.randn(2, sk, hkv, 6, generator=gen),
        )
    return data


def _worker(rank: int, world: int, tmp: str) -> None:
    """One rank: join the gloo group, run every case on its shard, save its results (or its traceback)."""
    import torch.distributed as dist

    tmp_path = Path(tmp)
    try:
        if sys.platform.startswith("linux"):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
        dist.init_process_group(
            "gloo",
            init_method=f"file://{tmp_path / 'store'}",
            world_size=world,
            rank=rank,
            timeout=timedelta(seconds=30),
        )
        data = torch.load(tmp_path / "inputs.pt")
        a, e = BOUNDS[world][rank], BOUNDS[world][rank + 1]
        results = {}
        with torch.inference_mode():
            for name, kwargs, _, sk, _, _ in CASES:
                q, k, v = data[name]
                results[name] = tiling_allreduce(
                    q, k[:, a:e], v[:, a:e], kv_offset=a, seqlen_k=sk, return_lse=True, **kwargs
                )
        torch.save(results, tmp_path / f"rank{rank}.pt")
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        (tmp_path / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


@pytest.mark.parametrize("world", [2, 4])
def test_tiling_allreduce_gloo(world: int, tmp_path: Path) -> None:
    data = _inputs(world)
    torch.save(data, tmp_path / "inputs.pt")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(rank, world, str(tmp_path)), daemon=True) for rank in range(world)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=60)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    errors = [(tmp_path / f"rank{r}.err").read_text() for r in range(world) if (tmp_path / f"rank{r}.err").exists()]
    assert not errors, "\n".join(errors)
    assert [p.exitcode for p in procs] == [0] * world, "a rank timed out or crashed"

    for rank in range(world):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for name, kwargs, *_ in CASES:
            q, k, v = data[name]
            ref_out, ref_lse = portattn.attention(q, k, v, return_lse=True, **kwargs)
            out, lse = results[name]
            assert not out.isnan().any(), (rank, name)
            if name == "causal_rows_see_nothing":
                assert (out[:, :2] == 0).all() and torch.isneginf(lse[:, :, :2]).all()
            torch.testing.assert_close(
                out, ref_out, atol=ATOL, rtol=1e-5, msg=lambda m, r=rank, n=name: f"{r} {n}: {m}"
            )
            torch.testing.assert_close(
                lse, ref_lse, atol=ATOL, rtol=1e-5, msg=lambda m, r=rank, n=name: f"{r} {n}: {m}"
            )
