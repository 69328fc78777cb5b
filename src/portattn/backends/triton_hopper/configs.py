"""Tuned launch configurations of ``triton_hopper``, per (kernel, head dim, causal, dtype, target).

Shipped as data so that a user's first call costs one compile, never an autotuning sweep.
``benchmarks/tune_triton_hopper.py`` re-derives them on a GPU.
"""

from __future__ import annotations

from typing import NamedTuple


class Config(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    tma: bool = True  # tensor descriptors where the strides allow; False = pointer path


INTERPRETER = Config(16, 16, 4, 1)  # small tiles: the interpreter is slow, and tails get exercised

# (kernel, head-dim bucket, causal-type band) -> config. sm90 values are the winners of
# benchmarks/tune_triton_hopper.py on an H100 with host-made descriptors (bf16, 16k tokens per batch,
# hidden 2048, 2026-11-24): the best geometric mean over seqlen 1024, 4096 and 16384, each kernel swept
# with the others at their defaults (log: benchmarks/results/h100_tune_host_2026-11-24.jsonl). Numbers
# are TF/s at 1024 / 4096 / 16384; the backward's count the whole backward (2.5x the forward's FLOPs).
SM90: dict[tuple[str, int, bool], Config] = {
    ("fwd", 64, False): Config(128, 64, 4, 3),  # 375 / 412 / 430
    ("fwd", 64, True): Config(64, 64, 4, 3),  # 307 / 376 / 381
    ("fwd", 128, False): Config(128, 128, 8, 3),  # long; see SM90_SHORT
    ("fwd", 128, True): Config(128, 128, 8, 3),
    ("fwd", 256, False): Config(64, 32, 4, 2),
    ("fwd", 256, True): Config(64, 32, 4, 2),
    ("dkdv", 64, False): Config(64, 64, 4, 3),  # 268 / 329 / 328
    ("dkdv", 64, True): Config(64, 64, 4, 3),  # 187 / 290 / 329
    ("dkdv", 128, False): Config(32, 64, 4, 3),  # 335 / 415 / 416
    ("dkdv", 128, True): Config(32, 64, 4, 3),  # 274 / 394 / - (2026-11-24, direct launches)
    ("dkdv", 256, False): Config(32, 64, 8, 2),
    ("dkdv", 256, True): Config(32, 64, 8, 2),
    ("dq", 64, False): Config(64, 128, 4, 3),  # 291 / 368 / 371
    ("dq", 64, True): Config(64, 64, 4, 2),  # 199 / 285 / 309
    ("dq", 128, False): Config(64, 64, 4, 3),  # 304 / 355 / 358
    ("dq", 128, True): Config(64, 64, 4, 3),  # 184 / - / 333
    ("dq", 256, False): Config(64, 32, 8, 2),
    ("dq", 256, True): Config(64, 32, 8, 2),
    # precision="fp8" forward, tuned like the above at 4096 and 16384 (fwd8 lines of
    # benchmarks/results/h100_tune_fwd8_2026-11-24.jsonl; TF/s count the prepass): 64-row query tiles
    # keep two programs per SM
    ("fwd8", 64, False): Config(64, 256, 4, 2),  # 387 / 459
    ("fwd8", 64, True): Config(64, 256, 4, 2),  # 222 / 416
    ("fwd8", 128, False): Config(64, 128, 4, 3),  # 522 / 664
    ("fwd8", 128, True): Config(64, 128, 4, 3),  # 387 / 636
    ("fwd8", 256, False): Config(64, 64, 4, 3),  # 528 / 704
    ("fwd8", 256, True): Config(64, 64, 4, 3),  # 385 / 657
}
# where a loop of at most SHORT positions (keys for fwd/dq, queries for dkdv) wants smaller tiles:
# more programs fill the 132 SMs, and big tiles' pipelines do not fill on few iterations
SHORT = 4096
SM90_SHORT: dict[tuple[str, int, bool], Config] = {
    ("fwd", 128, False): Config(64, 64, 4, 3),  # 423 / 494 vs 391 / 492 (long: 405 vs 508)
    ("fwd", 128, True): Config(64, 64, 4, 3),  # 261-339 / 462 vs 278 / 424 (long: 464 vs 492)
    # ("dkdv", 128, True) takes the long config: with launches no longer host-bound it led the sweeps at
    # 1024 (274 vs 243 TF/s for Config(64, 64, 4, 2)) and 4096 (394; 64-row tiles not in the top four)
}
# sm80/sm89 (pointer path): less shared memory than sm90; not yet tuned on such a GPU
SM80: dict[tuple[str, int], Config] = {  # no "fwd8": FP8 runs on sm90 only
    ("fwd", 64): Config(128, 64, 4, 3),
    ("fwd", 128): Config(128, 32, 4, 2),
    ("fwd", 256): Config(64, 32, 4, 1),
    ("dkdv", 64): Config(32, 64, 4, 2),
    ("dkdv", 128): Config(32, 64, 4, 2),
    ("dkdv", 256): Config(16, 32, 4, 1),
    ("dq", 64): Config(64, 32, 4, 2),
    ("dq", 128): Config(64, 32, 4, 2),
    ("dq", 256): Config(32, 16, 4, 1),
}


class WsConfig(NamedTuple):
    """The Gluon forward's launch (``gluon_fwd.py``)."""

    block_m: int  # query rows per consumer warpgroup; a tile is `consumers` times this
    block_n: int  # keys per block
    stages: int  # depth of the K/V ring in shared memory
    consumer_regs: int  # registers per thread of each worker consumer warpgroup after setmaxnreg
    pingpong: bool = False  # the consumers take turns at issuing GEMMs
    persistent: bool = False  # one program per SM walks the tiles (else one program per tile)
    consumers: int = 2  # consumer warpgroups per program (3-4: no ping-pong, and fewer registers each)
    # persistent, causal-type band only: the host deals the tiles out, heaviest first, each to the program
    # with the least work so far (a band's tiles see unequal numbers of key blocks); else the snake walk
    scheduled: bool = False
    # a consumer's S and the previous block's P V in flight together, softmax between (FlashAttention-3's
    # intra-warpgroup overlap); False: one block at a time, fewer live registers (4 consumers fit on 64-key
    # blocks), 16-bit only. Not shipped yet: benchmarks/tune_triton_hopper.py sweeps it at d=64
    overlap: bool = True
    # precision="fp8": the prepass stores V^T's keys in the order P's registers come in, so that P feeds
    # P V without shuffles (quant.p_operand_key_order). Not shipped yet: tuned with --kernels fwdws8
    permute_v: bool = False


# sm90, 16-bit, head dim 64 or 128, no window or softcap: per (head dim, causal-type band), configs by
# the largest key length each serves (None: any). Tuned on an H100 (benchmarks/tune_triton_hopper.py
# --kernels fwdws at seqlen 1024/4096/16384, 16k tokens per batch, hidden 2048;
# benchmarks/results/h100_tune_fwdws_2026-11-24.jsonl, the last sweep; TF/s in the comments).
# A persistent walk (one program per SM, tiles in snake order) wins at short and middle lengths, where
# a program's fixed costs are a large share, and loses at 16k causal, where its static walk leaves the
# programs uneven (d=128: 627 -> 470). d=64 takes 3 consumer warpgroups except at 1k (causal: 207 with
# 3 against 275 with 2; non-causal: 407 against 413 since d=64 releases Q early,
# results/h100_tune_fwdws_earlyq_2026-11-24.jsonl). Ping-pong is within noise of off; kept where it
# measured best.
_W2, _W3 = WsConfig(64, 128, 3, 240), WsConfig(64, 128, 3, 160, consumers=3)
SM90_WS: dict[tuple[int, bool], list[tuple[int | None, WsConfig]]] = {
    (64, False): [
        (1024, _W2._replace(persistent=True)),  # 434; 419 with 3 consumers (Q double-buffered, 2026-11-24g)
        (4096, _W3._replace(persistent=True)),  # 523
        (None, _W3),  # 565
    ],
    (64, True): [
        # 307-309 against 303 without ping-pong, with Q double-buffered (h100_tune_fwdws_qbuf_2026-11-24g)
        # scheduled: 323 / 322 against 317 / 318 for the snake walk (h100_tune_fwdws_scheduled_2026-11-25c;
        # d=64 at 4k and d=128 at 1k measured 1-4% slower scheduled, d=128 at 4k within noise)
        (1024, _W2._replace(stages=4, pingpong=True, persistent=True, scheduled=True)),
        (4096, _W3._replace(persistent=True)),  # 414
        (None, _W3),  # 493
    ],
    (128, False): [
        (1024, _W2._replace(persistent=True)),  # 557
        (4096, _W2),  # 646
        (None, _W2._replace(persistent=True)),  # 637
    ],
    (128, True): [(4096, _W2._replace(pingpong=True, persistent=True)), (None, _W2)],  # 414 / 562 / 627
}
# precision="fp8" on the Gluon forward (e4m3 tiles: a key block of 128 at d<=128 takes half a 16-bit
# one's shared memory; d=256 takes 64-key blocks, its 64 KB of output staging leaving room for no more).
# Tuned like SM90_WS (--kernels fwdws8; benchmarks/results/h100_tune_fwdws8_2026-11-24b.jsonl; TF/s at
# 1024 / 4096 / 16384, the prepass counted). As in 16 bits, the persistent walk loses at 16k causal
# (d=128: 430 against 605). d=64 is not tuned.
_F2 = WsConfig(64, 128, 3, 240, persistent=True)
_F2_256 = _F2._replace(block_n=64)
SM90_WS8: dict[tuple[int, bool], list[tuple[int | None, WsConfig]]] = {
    (64, False): [(None, _F2)],
    (64, True): [(None, _F2)],
    (128, False): [(None, _F2)],  # 340 / 569 / 671
    (128, True): [(4096, _F2), (None, _F2._replace(persistent=False))],  # 196 / 437 / 605
    (256, False): [(None, _F2_256)],  # 309 / 629 / 821
    (256, True): [(4096, _F2_256), (None, _F2_256._replace(persistent=False))],  # 183 / 469 / 759
}
WS_OVERRIDE: list[WsConfig] = []  # the tuning script sets it; nothing else should


def pick_ws(head_dim: int, causal: bool, seqlen_k: int, fp8: bool = False) -> WsConfig:
    """The Gluon forward's launch for one call (``fp8``: ``precision="fp8"``)."""
    if WS_OVERRIDE:
        return WS_OVERRIDE[0]
    table = SM90_WS8 if fp8 else SM90_WS
    return next(cfg for longest, cfg in table[(head_dim, causal)] if longest is None or seqlen_k <= longest)


# sm90, 16-bit, block-sparse patterns (the walk lists of launch._pattern_walk): (kernel, head-dim bucket)
# -> config, tiles clipped to the pattern's block. Tuned on an H100 at BigBird (±512 window, 128 global
# tokens, 16k, 16 heads, bf16; causal and not: benchmarks/sparse_sweep.py, results in
# benchmarks/results/h100_sparse_sweep_2026-11-24f*.json; ms of the forward, or of a training step with
# the one kernel swept). 128-key tiles run the pipelined walk slowly (fwd (64, 128, 4, 2): 0.92 ms against
# 0.52), and the dense d=128 tables would take them.
SM90_PATTERN: dict[tuple[str, int], Config] = {
    ("fwd", 128): Config(64, 64, 4, 3),  # 0.517 / 0.332 ms against 0.651 / 0.505 for (128, 128, 8, 3)
    ("dkdv", 128): Config(64, 64, 4, 2),  # step 2.194 / 1.637 ms against 2.365 / 1.845 for (32, 64, 4, 3)
    ("dq", 128): Config(64, 64, 4, 3),  # the dense config led
}

# kernel -> config that replaces the table (the tuning script sets it; nothing else should)
OVERRIDE: dict[str, Config] = {}


def bucket(head_dim: int) -> int:
    return 64 if head_dim <= 64 else 128 if head_dim <= 128 else 256


def pick(
    kernel: str,
    head_dim: int,
    capability: tuple[int, int] | None,
    *,
    causal: bool = False,
    fp32: bool = False,
    loop_len: int = 0,
    pattern_block: int = 0,
) -> Config:
    """The config for one launch; ``capability`` None means the interpreter. ``loop_len``: the length
    of the kernel's inner loop (keys for fwd and dq, queries for dkdv); ``pattern_block``: the block of
    the block-sparse pattern the kernel walks (0: none), which the tiles must divide."""
    if kernel in OVERRIDE:
        cfg = OVERRIDE[kernel]
    elif capability is None:
        cfg = INTERPRETER
    else:
        if capability < (9, 0):
            cfg = SM80[(kernel, bucket(head_dim))]
        elif pattern_block and (kernel, bucket(head_dim)) in SM90_PATTERN:
            cfg = SM90_PATTERN[(kernel, bucket(head_dim))]
        else:
            key = (kernel, bucket(head_dim), causal)
            cfg = SM90_SHORT.get(key, SM90[key]) if loop_len <= SHORT else SM90[key]
        if fp32:  # twice the bytes per element: halve the key tile and the pipeline depth
            cfg = cfg._replace(block_n=max(16, cfg.block_n // 2), num_stages=max(1, cfg.num_stages - 1))
    if pattern_block:  # powers of two: a tile no larger than the pattern's blocks divides them
        cfg = cfg._replace(block_m=min(cfg.block_m, pattern_block), block_n=min(cfg.block_n, pattern_block))
    return cfg
