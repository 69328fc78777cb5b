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
# benchmarks/tune_triton_hopper.py on an H100 (bf16, 16k tokens per batch, hidden 2048, seqlen 4096,
# 2026-11-24); each kernel was swept with the others at their defaults. At d=64 the pointer path
# beat the descriptor path (412 vs 405 TF/s at seqlen 4096, 366 vs 327 at 1024; causal 362 vs 346,
# 266 vs 223): the in-kernel descriptors cost each program a setup that short loops do not hide.
SM90: dict[tuple[str, int, bool], Config] = {
    ("fwd", 64, False): Config(128, 64, 8, 3, tma=False),  # 412 TF/s
    ("fwd", 64, True): Config(128, 64, 8, 3, tma=False),  # 359
    ("fwd", 128, False): Config(128, 64, 4, 2),  # 491
    ("fwd", 128, True): Config(128, 64, 4, 2),  # 433
    ("fwd", 256, False): Config(64, 32, 4, 2),
    ("fwd", 256, True): Config(64, 32, 4, 2),
    # backward on the descriptor path: the pointer path swept 3-15% faster in the tuner at d=128
    # (h100_tune_bwd_pointer log) but not in the full benchmark (within run-to-run spread), and it
    # faulted at head_dim 40 / head_dim_v 24 in the GPU battery: see POINTER_PATH_HEAD_DIM_V
    ("dkdv", 64, False): Config(64, 64, 4, 3),
    ("dkdv", 64, True): Config(32, 128, 4, 3),
    ("dkdv", 128, False): Config(64, 128, 8, 3),
    ("dkdv", 128, True): Config(64, 128, 8, 3),
    ("dkdv", 256, False): Config(32, 64, 8, 2),
    ("dkdv", 256, True): Config(32, 64, 8, 2),
    ("dq", 64, False): Config(128, 64, 8, 3),
    ("dq", 64, True): Config(128, 64, 8, 3),
    ("dq", 128, False): Config(128, 64, 8, 3),
    ("dq", 128, True): Config(128, 64, 8, 3),
    ("dq", 256, False): Config(64, 32, 8, 2),
    ("dq", 256, True): Config(64, 32, 8, 2),
}
# sm80/sm89 (pointer path): less shared memory than sm90; not yet tuned on such a GPU
SM80: dict[tuple[str, int], Config] = {
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
) -> Config:
    """The config for one launch; ``capability`` None means the interpreter."""
    if kernel in OVERRIDE:
        return OVERRIDE[kernel]
    if capability is None:
        return INTERPRETER
    cfg = SM80[(kernel, bucket(head_dim))] if capability < (9, 0) else SM90[(kernel, bucket(head_dim), causal)]
    if fp32:  # twice the bytes per element: halve the key tile and the pipeline depth
        cfg = cfg._replace(block_n=max(16, cfg.block_n // 2), num_stages=max(1, cfg.num_stages - 1))
    return cfg
