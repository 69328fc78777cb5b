"""Where the time of ``precision="fp8"`` goes on a GPU: the prepass of each operand, the whole call,
and the 16-bit forward, at one shape (CUDA events, median of 20 after 5 warm-up calls).

    python3 benchmarks/fp8_profile.py [--seqlen 16384] [--head-dim 128] [--causal] [--sweep]

``--sweep`` also times the prepass alone over tile sizes and warp counts, against torch's copy of Q.
``--kernels`` splits one fp8 call by torch.profiler into each kernel's device time and the host's time
to issue the call (launches, descriptors, allocations): when the host is the slower, the GPU waits.
"""

from __future__ import annotations

import statistics
import time
from functools import partial

import _grid
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
    ap = _grid.parser(seqlen=16384)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--kernels", action="store_true")
    args = ap.parse_args()
    s, d = args.seqlen, args.head_dim
    b, h, q, k, v = _grid.inputs(s, d)
    m = quant.signed_hadamard(d, "cuda", torch.bfloat16)
    flops = 4 * b * h * s * s * d / (2 if args.causal else 1)
    rows = {
        "prepass of q, k, v (one launch)": _ms(lambda: launch._quantize_qkv(q, k, v, 64, 128, m)),
        "fp8 call (3 prepasses + forward)": _ms(
            lambda: portattn.attention(q, k, v, precision="fp8", causal=args.causal)
        ),
        "bf16 forward": _ms(lambda: portattn.attention(q, k, v, causal=args.causal)),
    }
    if args.sweep:
        # a clone moves 4 bytes per element; the prepass 3 (2 read, 1 written) for each of q, k, v
        rows["torch clone of q (prepass floor: this x 2.25)"] = _ms(lambda: q.clone())
        for block_q, block_kv in ((64, 64), (64, 128), (128, 128)):
            for warps in (2, 4, 8):
                rows[f"prepass blocks={block_q},{block_kv} warps={warps}"] = _ms(
                    partial(launch._quantize_qkv, q, k, v, block_q, block_kv, m, warps)
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
