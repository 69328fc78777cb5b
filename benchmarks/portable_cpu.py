"""``portable`` on the CPU against torch's own CPU SDPA: speed, and peak extra memory at long seqlen.

Speed: ``portattn.attention(q, k, v, causal=..., backend="portable")`` against
``F.scaled_dot_product_attention`` (torch's default CPU kernel choice) on the same data, SDPA getting
its own ``(batch, heads, seqlen, head_dim)`` contiguous layout. The two are timed interleaved, forward
only, under ``torch.no_grad()``; medians of ``--repeats`` runs after one warm-up each.

Memory: each measurement runs in a fresh subprocess. After creating the inputs and one tiny warm-up
call, the process's peak RSS is reset (``/proc/self/clear_refs`` 5, falling back to
``getrusage().ru_maxrss`` where that is unavailable), the call runs, and
``delta = peak RSS during the call - RSS before it``. The delta includes the tensors the call returns
(out, lse, and for fwd+bwd the input gradients); ``workspace`` is what remains after subtracting those.
It is compared with one ``seqlen x seqlen`` float32 score matrix. Two control rows: one allocates and
touches a tensor of known size (the method must see exactly that), one runs the first large backward of
a process without any attention, ``y.backward(dout)`` for ``y = x * 2`` (built before the baseline)
with ``x`` the size of q, to show what autograd itself adds to a process's first backward.

    python benchmarks/portable_cpu.py                      # speed table, then memory table
    python benchmarks/portable_cpu.py --skip-memory --seqlens 1024,2048
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import portattn

MIB = 2**20


def _inputs(batch: int, seqlen: int, heads: int, head_dim: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, seqlen, heads, head_dim, generator=gen) for _ in range(3)]


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def speed(args) -> None:
    b, h, d = args.batch, args.heads, args.head_dim
    print(f"### Forward time, float32, B={b}, H={h}, D={d}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} (interleaved)\n")  # fmt: skip
    print("| seqlen | causal | portable ms | torch SDPA ms | ratio portable/SDPA | max abs diff |")
    print("| ---: | :---: | ---: | ---: | ---: | ---: |")
    for seqlen in args.seqlens:
        for causal in (False, True):
            q, k, v = _inputs(b, seqlen, h, d)
            qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))  # SDPA's own layout

            def ours(q=q, k=k, v=v, causal=causal):
                return portattn.attention(q, k, v, causal=causal, backend="portable")

            def theirs(qt=qt, kt=kt, vt=vt, causal=causal):
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

            with torch.no_grad():
                diff = (ours() - theirs().transpose(1, 2)).abs().max().item()  # also the warm-up
                t_ours, t_theirs = [], []
                for r in range(args.repeats):
                    if r % 2 == 0:
                        t_ours.append(_ms(ours))
                        t_theirs.append(_ms(theirs))
                    else:
                        t_theirs.append(_ms(theirs))
                        t_ours.append(_ms(ours))
            mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
            print(f"| {seqlen} | {'yes' if causal else 'no'} | {mo:.1f} | {mt:.1f} | {mo / mt:.2f} | {diff:.1e} |",
                  flush=True)  # fmt: skip


# ---------------------------------------------------------------- memory (child process side)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: reset the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def _child(what: str, seqlen: int, b: int, h: int, d: int) -> dict:
    """Runs in a fresh process; returns the measurement as a dict."""
    torch.manual_seed(0)
    returned = 0
    if what == "control":
        n = seqlen  # seqlen is the size in MiB here
        fn = lambda: torch.ones(n * MIB // 4)  # noqa: E731
        returned = n * MIB
        warm = lambda: torch.ones(16)  # noqa: E731
    elif what == "autograd":  # the first large backward of a process, without attention: y.backward
        x = torch.randn(b, seqlen, h, d, requires_grad=True)
        y = x * 2  # built before the baseline: only the backward is measured
        dout = torch.randn_like(x)
        small = x[:, :64].detach().clone().requires_grad_()

        def fn():
            y.backward(dout)
            return x.grad

        warm = lambda: (small * 2).sum().backward()  # noqa: E731
        returned = b * seqlen * h * d * 4
    else:
        grad = what.endswith("fwd+bwd")
        q, k, v = (x.requires_grad_(grad) for x in _inputs(b, seqlen, h, d))
        io = b * seqlen * h * d * 4
        lse_bytes = b * h * seqlen * 4
        if what.startswith("portable"):
            call = lambda q, k, v: portattn.attention(q, k, v, backend="portable")  # noqa: E731
        else:
            qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
            call = lambda q, k, v: F.scaled_dot_product_attention(qt, kt, vt)  # noqa: E731
        small = [x[:, :64].detach().clone().requires_grad_(grad) for x in (q, k, v)]
        if grad:
            dout = torch.randn_like(q)

            def fn():
                out = call(q, k, v)
                out.backward(dout)
                return out, q.grad, k.grad, v.grad

            warm = lambda: call(*small).sum().backward()  # noqa: E731
            returned = io * 4 + lse_bytes  # out, dq, dk, dv; lse kept by autograd until out is freed
        else:

            def fn():
                with torch.no_grad():
                    return call(q, k, v)

            def warm():
                with torch.no_grad():
                    call(*small)

            returned = io if what.startswith("sdpa") else io + lse_bytes
    warm()
    before_kib = _status_kib("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = _reset_peak()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    hwm = _status_kib("VmHWM")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del result
    peak_kib = hwm if (reset and hwm is not None) else maxrss
    return {
        "what": what,
        "seqlen": seqlen,
        "method": "VmHWM after clear_refs" if (reset and hwm is not None) else "ru_maxrss",
        "delta": (peak_kib - before_kib) * 1024,
        "maxrss_delta": (maxrss - before_kib) * 1024,
        "maxrss_before_excess": (maxrss_before - before_kib) * 1024,
        "returned": returned,
        "seconds": seconds,
    }


def memory(args) -> int:
    s = args.memory_seqlen
    score = s * s * 4
    print(f"\n### Peak extra memory (RSS) at seqlen {s}, float32, B={args.batch}, H={args.heads}, D={args.head_dim}, "
          f"non-causal; one {s}x{s} fp32 score matrix = {score / MIB:.0f} MiB\n")  # fmt: skip
    print(
        "| call | delta MiB | returned tensors MiB | workspace MiB | delta / score matrix | workspace / score matrix "
        "| time s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    jobs = [("control", 256), ("autograd", s)] + [(w, s) for w in args.memory_calls]
    status = 0
    for what, seqlen in jobs:
        cmd = [sys.executable, os.path.abspath(__file__), "--_child", what, str(seqlen),
               str(args.batch), str(args.heads), str(args.head_dim)]  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"| {what} | failed: {proc.stderr.strip().splitlines()[-1:]} | | | | | |")
            status = 1
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        work = r["delta"] - r["returned"]
        label = {"control": "control: torch.ones(256 MiB)", "autograd": "control: y.backward(dout), y = x * 2"}
        label = label.get(what, what)
        frac = "" if what == "control" else f"{r['delta'] / score:.3f}"
        wfrac = "" if what == "control" else f"{work / score:.3f}"
        print(f"| {label} | {r['delta'] / MIB:.1f} | {r['returned'] / MIB:.1f} | {work / MIB:.1f} | {frac} | {wfrac} "
              f"| {r['seconds']:.1f} |", flush=True)  # fmt: skip
        if args.verbose:
            print(f"<!-- {r} -->")
    print(f"\n(peak read as {r['method']}; RSS before each call is taken after the inputs and a tiny warm-up call)")
    return status


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_child":
        what, seqlen, b, h, d = sys.argv[2], *(int(x) for x in sys.argv[3:7])
        print(json.dumps(_child(what, seqlen, b, h, d)))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seqlens", default="1024,2048,4096,8192")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--memory-seqlen", type=int, default=16384)
    p.add_argument("--memory-calls", default="portable fwd,portable fwd+bwd,sdpa fwd",
                   help="comma-separated: portable fwd, portable fwd+bwd, sdpa fwd, sdpa fwd+bwd")  # fmt: skip
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    args.seqlens = [int(s) for s in args.seqlens.split(",") if s]
    args.memory_calls = [c.strip() for c in args.memory_calls.split(",") if c.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, portattn {portattn.__version__}, {torch.get_num_threads()} threads\n")
    if not args.skip_speed:
        speed(args)
    return 0 if args.skip_memory else memory(args)


if __name__ == "__main__":
    sys.exit(main())
