"""Where the host's time goes in one ``portattn.attention`` call on a GPU (cProfile over many calls).

    python3 benchmarks/host_profile.py [--seqlen 1024] [--head-dim 128] [--precision fp8] [--top 25]
                                       [--backward]

A call whose GPU work is shorter than the host's time to issue it leaves the GPU idle: at short
sequences the host sets the speed. Prints the host time per call without the profiler, then the
functions with the most own time under it. ``--backward`` profiles the chosen backend's backward
instead, called directly: autograd would run it on another thread, which cProfile does not see.
"""

from __future__ import annotations

import cProfile
import pstats
import time

import _grid
import torch

import portattn


def main() -> None:
    ap = _grid.parser()
    ap.add_argument("--precision", default=None)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--backward", action="store_true")
    args = ap.parse_args()
    s, d = args.seqlen, args.head_dim
    b, h, q, k, v = _grid.inputs(s, d)

    def call():
        return portattn.attention(q, k, v, precision=args.precision, causal=args.causal)

    what = "call"
    if args.backward:
        from portattn import _api

        q.requires_grad_()
        bw_call, backend = _api.resolve(q, k, v, causal=args.causal, window=None, scale=None, softcap=None,
                                        sparsity=None, bias=None, precision=args.precision, return_lse=False,
                                        backend=None, top_left=False)  # fmt: skip
        with torch.no_grad():
            out, lse = backend.forward(bw_call, q, k, v)
        dout = torch.randn_like(out)
        what = f"{backend.name} backward"

        def call():
            with torch.no_grad():  # as autograd runs it
                return backend.backward(bw_call, q, k, v, out, lse, dout)

    for _ in range(10):
        call()
    torch.cuda.synchronize()
    calls = 200
    start = time.perf_counter()
    for _ in range(calls):
        call()
    issue_ms = (time.perf_counter() - start) * 1e3 / calls
    torch.cuda.synchronize()
    total_ms = (time.perf_counter() - start) * 1e3 / calls
    print(f"b={b} s={s} h={h} d={d} precision={args.precision} causal={args.causal}")
    print(f"host time to issue one {what}: {issue_ms:.3f} ms; with the GPU's work: {total_ms:.3f} ms per call")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        call()
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
