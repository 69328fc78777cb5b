"""The shipped ``triton_hopper`` launch configs: complete, within Hopper's shared memory, picked by length."""

from __future__ import annotations

import itertools

import pytest

from portattn.backends.triton_hopper import configs

SM90_SMEM = 227 * 1024  # bytes of shared memory one block may use on an H100


def _smem_bytes(kernel: str, cfg: configs.Config, dim: int, elem: int) -> int:
    """A lower bound of the pipelined tiles' shared memory: the resident operand plus ``num_stages``
    copies of the streamed ones."""
    resident, streamed = (cfg.block_n, cfg.block_m) if kernel == "dkdv" else (cfg.block_m, cfg.block_n)
    return (resident + 2 * cfg.num_stages * streamed) * dim * elem


@pytest.mark.parametrize(
    "kernel,bucket,causal", itertools.product(("fwd", "dkdv", "dq", "fwd8"), (64, 128, 256), (False, True))
)
@pytest.mark.parametrize("fp32", [False, True])
@pytest.mark.parametrize("loop_len", [1024, 16384])
def test_every_sm90_config_fits_shared_memory(kernel, bucket, causal, fp32, loop_len):
    fp32 = fp32 and kernel != "fwd8"  # FP8 takes 16-bit inputs and runs on 1-byte tiles
    cfg = configs.pick(kernel, bucket, (9, 0), causal=causal, fp32=fp32, loop_len=loop_len)
    elem = 1 if kernel == "fwd8" else 4 if fp32 else 2
    assert _smem_bytes(kernel, cfg, bucket, elem) <= SM90_SMEM, cfg
    assert cfg.block_m & (cfg.block_m - 1) == 0 and cfg.block_n & (cfg.block_n - 1) == 0


def test_short_loops_take_the_short_table():
    for key, short_cfg in configs.SM90_SHORT.items():
        kernel, bucket, causal = key
        assert configs.pick(kernel, bucket, (9, 0), causal=causal, loop_len=configs.SHORT) == short_cfg
        long_cfg = configs.pick(kernel, bucket, (9, 0), causal=causal, loop_len=configs.SHORT + 1)
        assert long_cfg == configs.SM90[key] != short_cfg


def test_head_dims_map_to_buckets_and_targets():
    assert [configs.bucket(d) for d in (32, 64, 65, 96, 128, 129, 256)] == [64, 64, 128, 128, 128, 256, 256]
    assert configs.pick("fwd", 64, (8, 0)) == configs.SM80[("fwd", 64)]
    assert configs.pick("fwd", 64, None) == configs.INTERPRETER
    configs.OVERRIDE["dq"] = configs.Config(16, 16, 1, 1)
    try:
        assert configs.pick("dq", 128, (9, 0)) == configs.Config(16, 16, 1, 1)
    finally:
        configs.OVERRIDE.clear()


def test_gluon_forward_table_is_well_formed():
    """Every (head dim, causal) entry of the Gluon forward's table ends with a catch-all, its key
    lengths rise, and each config is one the kernel accepts (3 consumers fit d=64 only, ping-pong
    needs 2, the ring fits in shared memory)."""
    for (head_dim, causal), entries in configs.SM90_WS.items():
        limits = [longest for longest, _ in entries]
        assert limits[-1] is None and None not in limits[:-1], (head_dim, causal)
        assert limits[:-1] == sorted(limits[:-1]), (head_dim, causal)
        for _, cfg in entries:
            assert cfg.consumers in (2, 3) and not (cfg.pingpong and cfg.consumers == 3)
            assert cfg.consumers == 2 or head_dim == 64
            tile_bytes = 2 * head_dim * (cfg.consumers * cfg.block_m + 2 * cfg.stages * cfg.block_n)
            assert tile_bytes <= 227 * 1024, (head_dim, causal, cfg)
            assert cfg.consumer_regs * cfg.consumers + 24 <= 512  # registers per thread, per group of 128
        assert configs.pick_ws(head_dim, causal, 1 << 20) is entries[-1][1]
        assert configs.pick_ws(head_dim, causal, 1) is entries[0][1]


@pytest.mark.parametrize(
    "batch,heads,group,seqlen_q,seqlen_k,consumers",
    [(16, 32, 1, 1024, 1024, 2), (4, 32, 4, 4096, 4096, 3), (2, 6, 2, 777, 1234, 2), (1, 8, 1, 3001, 1000, 2)],
)
def test_tile_schedule_deals_every_tile_once_and_evens_the_programs(batch, heads, group, seqlen_q, seqlen_k, consumers):
    """The scheduled walk's tile list (causal-type band): every tile exactly once, per-program runs that
    the offsets delimit, and no program with more work than the snake walk's busiest one."""
    pytest.importorskip("triton")
    import torch

    from portattn._call import normalize
    from portattn.backends.triton_hopper import launch

    q = torch.empty(batch, seqlen_q, heads, 64, dtype=torch.bfloat16)
    k = torch.empty(batch, seqlen_k, heads // group, 64, dtype=torch.bfloat16)
    call = normalize(q, k, k, causal=True, window=None, scale=None, softcap=None, sparsity=None, bias=None,
                     precision=None, return_lse=False, top_left=False)  # fmt: skip
    cfg = configs.WsConfig(64, 128, 3, 240, persistent=True, consumers=consumers, scheduled=True)
    tile = consumers * cfg.block_m
    n_m = -(-seqlen_q // tile)
    n_tiles = n_m * batch * heads
    programs = min(132, n_tiles)
    table = launch._tile_schedule(call, cfg, n_m, programs, torch.device("cpu")).tolist()
    offsets, flat = table[: programs + 1], table[programs + 1 :]
    assert offsets[0] == 0 and offsets[-1] == n_tiles == len(flat)
    assert sorted(flat) == list(range(n_tiles))

    def work(t: int) -> int:  # key blocks of the tile (the walk takes a head's last query tiles first)
        m0 = (n_m - 1 - t % n_m) * tile
        last_row0 = m0 + 64 * min(consumers - 1, (seqlen_q - 1 - m0) // 64)
        return -(-max(min(last_row0 + 64 + call.band[1], seqlen_k), 0) // 128) + 1  # +1: a tile's fixed cost

    scheduled = max(sum(work(t) for t in flat[offsets[p] : offsets[p + 1]]) for p in range(programs))
    snake = [0] * programs
    for r in range(-(-n_tiles // programs)):
        for p in range(programs):
            t = r * programs + (p if r % 2 == 0 else programs - 1 - p)
            if t < n_tiles:
                snake[p] += work(t)
    assert scheduled <= max(snake)
