"""Where the time of ``precision="fp8"`` goes on a GPU: the prepass of each operand, the whole call,
and the 16-bit forward, at one shape (CUDA events, median of 20 after 5 warm-up calls).

    python3 benchmarks/fp8_profile.py [--seqlen 16384] [--head-dim 128] [--causal]
"""

from __future__ import annotations

import argparse
import statistics

import torch

import portattn
from portattn.backends.triton_hopper import launch, quant


def _ms(fn) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlen", type=int, default=16384)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--causal", action="store_true")
    args = ap.parse_args()
    s, d = args.seqlen, args.head_dim
    b, h = max(1, 16384 // s), 2048 // d
    q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    m = quant.signed_hadamard(d, "cuda", torch.bfloat16)
    flops = 4 * b * h * s * s * d / (2 if args.causal else 1)
    rows = {
        "prepass q (rotate)": _ms(lambda: launch._quantize(q, 128, d, m, False)),
        "prepass v (transpose)": _ms(lambda: launch._quantize(v, 128, d, None, True)),
        "fp8 call (3 prepasses + forward)": _ms(
            lambda: portattn.attention(q, k, v, precision="fp8", causal=args.causal)
        ),
        "bf16 forward": _ms(lambda: portattn.attention(q, k, v, causal=args.causal)),
    }
    print(f"b={b} s={s} h={h} d={d} causal={args.causal}")
    for name, ms in rows.items():
        tf = f"{flops / ms / 1e9:.0f} TF/s" if "prepass" not in name else ""
        print(f"{name:36s} {ms:8.3f} ms {tf}")


if __name__ == "__main__":
    main()
