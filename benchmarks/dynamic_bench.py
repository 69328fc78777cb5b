"""Dynamic sparsity (``sparse.qk_drop``, ``sparse.hash_buckets``) against dense causal attention, as in
Pagliardini et al.'s grid (issue 8): fwd and fwd+bwd time, compaction and scatter included.

    python3 benchmarks/dynamic_bench.py [--seqlen 16384] [--heads 16] [--head-dim 128] [--json F]

bf16, batch 1, causal, ``triton_hopper``. QK-drop keeps a random 50% of the queries and of the keys
(per head); hash buckets draws ids uniformly from 8 or 16 buckets (per head). Median of
``triton.testing.do_bench``. ``speed-up`` is the dense time over the sparse one.
"""

from __future__ import annotations

import argparse
import json

import torch
import triton.testing

import portattn
from portattn import sparse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlen", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--json")
    args = ap.parse_args()
    s, h, d = args.seqlen, args.heads, args.head_dim
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(1, s, h, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    cases = {
        "dense causal": None,
        "qk_drop 50%": sparse.qk_drop(torch.rand(1, s, h, device="cuda", generator=gen) < 0.5,
                                      torch.rand(1, s, h, device="cuda", generator=gen) < 0.5),
        "hash_buckets 8": sparse.hash_buckets(torch.randint(0, 8, (1, s, h), device="cuda", generator=gen),
                                              torch.randint(0, 8, (1, s, h), device="cuda", generator=gen)),
        "hash_buckets 16": sparse.hash_buckets(torch.randint(0, 16, (1, s, h), device="cuda", generator=gen),
                                               torch.randint(0, 16, (1, s, h), device="cuda", generator=gen)),
    }  # fmt: skip
    rows = []
    for name, pattern in cases.items():
        fwd = lambda p=pattern: portattn.attention(q, k, v, causal=True, sparsity=p)  # noqa: E731
        both = lambda p=pattern: torch.autograd.grad(  # noqa: E731
            portattn.attention(*leaves, causal=True, sparsity=p), leaves, dout
        )
        t_fwd = triton.testing.do_bench(fwd, warmup=10, rep=100, return_mode="median")
        t_both = triton.testing.do_bench(both, warmup=10, rep=100, return_mode="median")
        rows.append(dict(case=name, fwd_ms=round(t_fwd, 3), fwdbwd_ms=round(t_both, 3)))
    dense = rows[0]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, seqlen {s}, heads {h}, d {d}, bf16, causal")
    print("| case | fwd ms | fwd speed-up | fwd+bwd ms | fwd+bwd speed-up |")
    print("|---|---|---|---|---|")
    for r in rows:
        r.update(fwd_speedup=round(dense["fwd_ms"] / r["fwd_ms"], 2),
                 fwdbwd_speedup=round(dense["fwdbwd_ms"] / r["fwdbwd_ms"], 2))  # fmt: skip
        print(f"| {r['case']} | {r['fwd_ms']} | {r['fwd_speedup']} | {r['fwdbwd_ms']} | {r['fwdbwd_speedup']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
