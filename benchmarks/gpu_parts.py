"""Where one forward+backward's time goes: GPU kernels and host ops (torch profiler).

python3 benchmarks/gpu_parts.py [--seqlen 1024] [--head-dim 128] [--causal]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import portattn


def tables(step, iters: int = 20) -> tuple[list, list, float]:
    """(GPU kernels, host ops by self time, host time per step): ``(name, us per step, count per step)``."""
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    gpu, cpu = [], []
    for e in prof.key_averages():
        device_us = getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)
        if device_us > 0 and e.count >= iters:
            gpu.append((e.key[:70], device_us / iters, e.count // iters))
        if e.self_cpu_time_total > 0 and e.count >= iters:
            cpu.append((e.key[:70], e.self_cpu_time_total / iters, e.count // iters))
    start = time.perf_counter()
    for _ in range(iters):
        step()
    host_us = (time.perf_counter() - start) * 1e6 / iters
    torch.cuda.synchronize()
    return sorted(gpu, key=lambda r: -r[1]), sorted(cpu, key=lambda r: -r[1]), host_us


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--causal", action="store_true")
    args = ap.parse_args()
    s, d = args.seqlen, args.head_dim
    b, h = max(1, 16384 // s), 2048 // d
    q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn_like(q)

    def ours():
        for t in (q, k, v):
            t.grad = None
        portattn.attention(q, k, v, causal=args.causal).backward(grad)

    def trivial():  # autograd's own cost: one tiny op and its backward
        x.grad = None
        (x * 2).sum().backward()

    x = torch.randn(1024, device="cuda", requires_grad=True)
    gpu, cpu, host_us = tables(ours)
    print(f"b={b} s={s} h={h} d={d} causal={args.causal}: one fwd+bwd; host {host_us:.1f} us to issue")
    print(f"  GPU kernels, total {sum(r[1] for r in gpu):.1f} us")
    for name, us, count in gpu[:8]:
        print(f"    {name:70s} {us:8.1f} us  x{count}")
    print("  host, by self time")
    for name, us, count in cpu[:14]:
        print(f"    {name:70s} {us:8.1f} us  x{count}")
    print(f"  a trivial autograd step ((x*2).sum().backward()): host {tables(trivial)[2]:.1f} us")


if __name__ == "__main__":
    main()
