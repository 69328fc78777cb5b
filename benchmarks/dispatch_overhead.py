"""Dispatch overhead of ``portattn.attention`` against calling torch SDPA by hand, on tiny CPU tensors.

For tensors in portattn's layout ``(batch, seqlen, heads, head_dim)`` a user without portattn writes::

    F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

On tiny shapes the kernel costs little, so the difference is what portattn adds per call (signature
lookup, cached dispatch, the plugin's wrapper). Both are timed in one process, interleaved (rounds
alternate which goes first), each round a batch of calls; the medians of the per-call times are
compared. Exit status 1 if any ratio exceeds ``--max-ratio`` (default 1.5).

    python benchmarks/dispatch_overhead.py [--rounds 41] [--calls 2000] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import portattn

SHAPES = [(1, 8, 2, 16), (2, 16, 4, 32), (1, 32, 8, 64)]  # (batch, seqlen, heads, head_dim)


def _per_call_us(fn, q, k, v, calls: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        fn(q, k, v)
    return (time.perf_counter_ns() - t0) / calls / 1e3


def by_hand(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def via_portattn(q, k, v):
    return portattn.attention(q, k, v, backend="sdpa")


def measure(shape, rounds: int, calls: int) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(*shape, generator=gen) for _ in range(3))
    torch.testing.assert_close(via_portattn(q, k, v), by_hand(q, k, v))  # same computation
    for fn in (via_portattn, by_hand):  # warm-up: dispatch cache, allocator, kernel selection
        _per_call_us(fn, q, k, v, calls)
    ours, theirs = [], []
    for r in range(rounds):
        order = (via_portattn, by_hand) if r % 2 == 0 else (by_hand, via_portattn)
        for fn in order:
            (ours if fn is via_portattn else theirs).append(_per_call_us(fn, q, k, v, calls))
    return statistics.median(ours), statistics.median(theirs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=41, help="interleaved rounds per shape (median over rounds)")
    p.add_argument("--calls", type=int, default=2000, help="calls per round")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--max-ratio", type=float, default=1.5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, portattn {portattn.__version__}, python {platform.python_version()}, "
          f"{args.threads} thread(s), {args.rounds} rounds x {args.calls} calls per shape, CPU float32, "
          "inputs without requires_grad\n")  # fmt: skip
    print('| shape (B, S, H, D) | portattn.attention(backend="sdpa") µs | SDPA by hand µs | overhead µs | ratio |')
    print("| --- | ---: | ---: | ---: | ---: |")
    worst = 0.0
    for shape in SHAPES:
        ours, theirs = measure(shape, args.rounds, args.calls)
        ratio = ours / theirs
        worst = max(worst, ratio)
        print(f"| {shape} | {ours:.2f} | {theirs:.2f} | {ours - theirs:.2f} | {ratio:.2f} |", flush=True)
    verdict = "PASS" if worst <= args.max_ratio else "FAIL"
    print(f"\nworst ratio {worst:.2f} (limit {args.max_ratio}): {verdict}")
    return 0 if worst <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
