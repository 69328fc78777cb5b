"""KV offload on a GPU: K/V in host memory against K/V already on the device (issue 6).

    python3 benchmarks/kv_offload.py [--seqlen-k 1048576] [--seqlen-q 16384] [--heads-q 32] [--heads-kv 8]
        [--head-dim 128] [--small-budget-mib 512] [--reps 3] [--json F]

One non-causal call of ``seqlen_q`` queries over ``seqlen_k`` keys, bf16, timed (CUDA events, median of
``--reps`` after a warm-up) with K/V on the device, in pinned host memory (the default budget), in
pageable host memory (staged through pinned buffers), and in pinned memory under a small budget
that holds a fraction of K/V. Each offloaded output is compared with the in-memory one, and a few
query rows of each with the float64 reference; the device's peak memory during the call is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

import portattn
from portattn import _offload


def _time(fn, reps: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up (compiles, pinned and device buffers enter the caches)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times), out


def _reference_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Float64 non-causal attention of a few query rows ``(rows, heads_q, d)`` over all keys ``(seqlen_k,
    heads_kv, d)``, one key/value head at a time (the reference backend would repeat K/V per query head:
    32 GiB here). Returns ``(1, rows, heads_q, d)``."""
    group = q.shape[1] // k.shape[1]
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    for h in range(k.shape[1]):
        kh, vh = k[:, h].double(), v[:, h].double()
        qh = q[:, h * group : (h + 1) * group].double()
        p = torch.softmax(torch.einsum("rgd,kd->rgk", qh, kh) * q.shape[-1] ** -0.5, dim=-1)
        out[:, h * group : (h + 1) * group] = torch.einsum("rgk,kd->rgd", p, vh)
    return out[None]


def _peak(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlen-k", type=int, default=1 << 20)
    ap.add_argument("--seqlen-q", type=int, default=16384)
    ap.add_argument("--heads-q", type=int, default=32)
    ap.add_argument("--heads-kv", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--small-budget-mib", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ref-rows", type=int, default=4, help="query rows checked against the float64 reference")
    ap.add_argument("--json")
    args = ap.parse_args()
    sq, sk, hq, hkv, d = args.seqlen_q, args.seqlen_k, args.heads_q, args.heads_kv, args.head_dim
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, sq, hq, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    k_dev, v_dev = (torch.randn(1, sk, hkv, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    k_pin, v_pin = (t.cpu().pin_memory() for t in (k_dev, v_dev))
    flops = 4 * hq * sq * sk * d
    kv_bytes = 2 * k_dev.numel() * k_dev.element_size()
    rows = slice(sq - args.ref_rows, sq)
    ref = _reference_rows(q[0, rows], k_dev[0], v_dev[0])
    torch.cuda.empty_cache()

    results = []

    def run(name: str, k: torch.Tensor, v: torch.Tensor, budget: int | None, base: torch.Tensor | None = None):
        def call():
            return portattn.attention(q, k, v, backend="triton_hopper")

        seconds, out = _time(call, args.reps)
        peak = _peak(call)
        err_ref = (out[:, rows].double() - ref).abs().max().item()
        err_mem = None if base is None else (out.float() - base.float()).abs().max().item()
        results.append(dict(variant=name, seconds=round(seconds, 4), tflops=round(flops / seconds / 1e12, 1),
                            max_err_vs_reference_rows=err_ref, max_err_vs_in_memory=err_mem,
                            peak_device_mib=round(peak / 2**20, 1),
                            budget_mib=None if budget is None else budget >> 20))  # fmt: skip
        return out

    base = run("K/V on the device", k_dev, v_dev, None)
    del k_dev, v_dev  # the offloaded calls must not find K/V on the device
    torch.cuda.empty_cache()
    run("pinned host, default budget", k_pin, v_pin, _offload.budget_bytes(), base)
    k_page, v_page = k_pin.clone(), v_pin.clone()  # clones of pinned tensors are pageable
    run("pageable host, default budget", k_page, v_page, _offload.budget_bytes(), base)
    del k_page, v_page
    small = args.small_budget_mib << 20
    with portattn.kv_budget(small):
        run(f"pinned host, {args.small_budget_mib} MiB budget", k_pin, v_pin, small, base)

    print(f"seqlen_q {sq}, seqlen_k {sk}, heads {hq}/{hkv}, d {d}, bf16, non-causal; K/V {kv_bytes / 2**30:.2f} GiB")
    print(
        "| variant | s | TF/s | vs on-device | max err vs in-memory | max err vs float64 (rows) | peak MiB | budget |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = results[0]["seconds"] / r["seconds"]
        mem = "-" if r["max_err_vs_in_memory"] is None else f"{r['max_err_vs_in_memory']:.3g}"
        err_ref, budget = f"{r['max_err_vs_reference_rows']:.3g}", r["budget_mib"] or "-"
        print(f"| {r['variant']} | {r['seconds']:.3f} | {r['tflops']} | {ratio:.2f} | {mem} | {err_ref} | "
              f"{r['peak_device_mib']} | {budget} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), kv_gib=kv_bytes / 2**30, device=torch.cuda.get_device_name(),
                           torch=torch.__version__, results=results), f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
