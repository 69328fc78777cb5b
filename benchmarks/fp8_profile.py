"""Where the time of ``precision="fp8"`` goes on a GPU: the prepass of each operand, the whole call,
and the 16-bit forward, at one shape (CUDA events, median of 20 after 5 warm-up calls).

    python3 benchmarks/fp8_profile.py [--seqlen 16384] [--head-dim 128] [--causal] [--sweep]

``--sweep`` also times the prepass kernel alone over row blocks and warp counts, against the time to
read the input and write its e4m3 copy at the HBM bandwidth torch's own copy reaches.
``--kernels`` splits one fp8 call by torch.profiler into each kernel's device time and the host's time
to issue the call (launches, descriptors, allocations): when the host is the slower, the GPU waits.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

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
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--kernels", action="store_true")
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
    if args.sweep:
        copy_ms = _ms(lambda: q.clone())  # reads and writes 2 bytes per element: 4 bytes moved
        rows["torch clone of q (bandwidth floor x 4/3)"] = copy_ms
        for block in (64, 128):
            for warps in (2, 4, 8):
                for name, rot, tr in (("q", m, False), ("v", None, True)):
                    rows[f"prepass {name} block={block} warps={warps}"] = _ms(
                        partial(launch._quantize, q, block, d, rot, tr, warps)
                    )
    print(f"b={b} s={s} h={h} d={d} causal={args.causal}")
    for name, ms in rows.items():
        tf = f"{flops / ms / 1e9:.0f} TF/s" if "prepass" not in name else ""
        print(f"{name:36s} {ms:8.3f} ms {tf}")
    if args.kernels:
        _split_by_kernel(lambda: portattn.attention(q, k, v, precision="fp8", causal=args.causal))


def _split_by_kernel(fn, calls: int = 20) -> None:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        host_ms = (time.perf_counter() - start) * 1e3 / calls  # issuing only: no synchronize inside
        torch.cuda.synchronize()
    device_us: dict[str, float] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            device_us[event.name[:60]] = device_us.get(event.name[:60], 0.0) + event.device_time / calls
    print(f"host time to issue one call (under the profiler): {host_ms:.3f} ms")
    for name, us in sorted(device_us.items(), key=lambda kv: -kv[1]):
        print(f"  device {us / 1e3:8.3f} ms  {name}")
    print(f"  device {sum(device_us.values()) / 1e3:8.3f} ms  all kernels")


if __name__ == "__main__":
    main()
