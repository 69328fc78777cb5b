"""Configs of ``triton_hopper``'s block-sparse kernels at BigBird, one kernel swept at a time.

    python3 benchmarks/sparse_sweep.py [--seqlen 16384] [--heads 16] [--head-dim 128] [--causal] [--json F]

bf16, batch 1, ``sparse.bigbird(512, 128, 0)`` (issue 8's mask). For each candidate the kernel's config
is forced through ``configs.OVERRIDE`` while the others keep their defaults; the forward's rows time the
forward, the dK/dV and dQ rows a training step (forward and ``autograd.grad`` of Q, K, V). Every row is
checked against the defaults' output (``diff``: max abs difference). Median of ``triton.testing.do_bench``.
"""

from __future__ import annotations

import json

import torch
import triton.testing
from sparse_bench import grid_inputs, grid_parser  # this folder is on the path when run as a script

import portattn
from portattn import sparse
from portattn.backends.triton_hopper import configs, launch
from portattn.backends.triton_hopper.configs import Config

CANDIDATES = {
    "fwd": [(64, 64, 4, 3), (64, 64, 4, 2), (64, 64, 4, 1), (64, 128, 4, 1), (64, 128, 4, 2), (128, 128, 8, 1),
            (128, 128, 8, 3), (128, 64, 8, 1), (128, 64, 8, 3)],
    "dkdv": [(64, 64, 4, 2), (64, 64, 4, 1), (64, 64, 4, 3), (32, 64, 4, 3), (32, 64, 4, 1), (64, 64, 8, 2),
             (64, 128, 8, 2)],
    "dq": [(64, 64, 4, 3), (64, 64, 4, 1), (64, 64, 4, 2), (64, 128, 4, 1), (128, 64, 8, 2), (32, 64, 4, 3)],
}  # fmt: skip


def main() -> None:
    ap = grid_parser()
    ap.add_argument("--causal", action="store_true")
    args = ap.parse_args()
    s, h, d = args.seqlen, args.heads, args.head_dim
    pattern = sparse.bigbird(512, 128, 0)
    q, k, v, dout = grid_inputs(args)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def forward():
        return [portattn.attention(q, k, v, backend="triton_hopper", sparsity=pattern, causal=args.causal)]

    def step():
        out = portattn.attention(*leaves, backend="triton_hopper", sparsity=pattern, causal=args.causal)
        return list(torch.autograd.grad(out, leaves, dout))

    def bench(fn):
        return triton.testing.do_bench(fn, warmup=10, rep=100, return_mode="median")

    want = {"fwd": [t.float() for t in forward()], "bwd": [t.float() for t in step()]}
    rows = [dict(kernel="defaults", fwd_ms=bench(forward), step_ms=bench(step))]
    print(f"{torch.cuda.get_device_name()}, seqlen {s}, heads {h}, d {d}, causal {args.causal}")
    print(f"defaults: fwd {rows[0]['fwd_ms']:.3f} ms, step {rows[0]['step_ms']:.3f} ms", flush=True)
    for kernel, candidates in CANDIDATES.items():
        fn, ref = (forward, want["fwd"]) if kernel == "fwd" else (step, want["bwd"])
        for cfg in candidates:
            configs.OVERRIDE.clear()
            configs.OVERRIDE[kernel] = Config(*cfg)
            launch._bwd_plans.clear()
            try:
                diff = max((a.float() - b).abs().max().item() for a, b in zip(fn(), ref, strict=True))
                ms = bench(fn)
            except Exception as exc:  # a config that does not compile or fit: report and go on
                print(f"{kernel} {cfg}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                continue
            rows.append(dict(kernel=kernel, config=list(cfg), ms=round(ms, 4), diff=diff))
            print(f"{kernel} {cfg}: {ms:.3f} ms, diff {diff:.3g}", flush=True)
    configs.OVERRIDE.clear()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), device=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
