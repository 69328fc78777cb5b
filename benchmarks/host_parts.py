"""Where one call's host time goes, part by part (the Gluon forward's path and the backward's).

    python3 benchmarks/host_parts.py [--seqlen 1024] [--head-dim 128] [--causal] [--profile]

Each part is issued in rounds of 40 calls; the time is the host's per issue in the best round.
``--profile``: instead, one training step (forward and ``.backward()``) under torch's profiler: the
GPU time by kernel, the host time by op, and autograd's own cost for comparison.
"""

from __future__ import annotations

import time

import _grid
import torch
from torch.profiler import ProfilerActivity, profile

import portattn
from portattn import _api


def per_issue_us(fn, calls: int = 40, rounds: int = 7) -> float:
    """The least host time per issue over ``rounds`` rounds of ``calls`` (few enough launches per round
    that CUDA's launch queue never fills, so the GPU cannot make the host wait)."""
    for _ in range(10):
        fn()
    best = float("inf")
    for _ in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) * 1e6 / calls)
    torch.cuda.synchronize()
    return best


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


def profile_step(q, k, v, grad, causal: bool) -> None:
    qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))

    def ours():
        for t in (qg, kg, vg):
            t.grad = None
        portattn.attention(qg, kg, vg, causal=causal).backward(grad)

    def trivial():  # autograd's own cost: one tiny op and its backward
        x.grad = None
        (x * 2).sum().backward()

    x = torch.randn(1024, device="cuda", requires_grad=True)
    gpu, cpu, host_us = tables(ours)
    print(f"one fwd+bwd: host {host_us:.1f} us to issue")
    print(f"  GPU kernels, total {sum(r[1] for r in gpu):.1f} us")
    for name, us, count in gpu[:8]:
        print(f"    {name:70s} {us:8.1f} us  x{count}")
    print("  host, by self time")
    for name, us, count in cpu[:14]:
        print(f"    {name:70s} {us:8.1f} us  x{count}")
    print(f"  a trivial autograd step ((x*2).sum().backward()): host {tables(trivial)[2]:.1f} us")


def main() -> None:
    ap = _grid.parser()
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    import triton
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from portattn.backends.triton_hopper import configs, direct, gluon_fwd, launch

    s, d = args.seqlen, args.head_dim
    b, h, q, k, v = _grid.inputs(s, d)
    causal = args.causal
    if args.profile:
        print(f"b={b} s={s} h={h} d={d} causal={causal}")
        profile_step(q, k, v, torch.randn_like(q), causal)
        return
    call, backend = _api.resolve(q, k, v, causal=causal, window=None, scale=None, softcap=None, sparsity=None,
                                 bias=None, precision=None, return_lse=False, backend=None, top_left=False)  # fmt: skip
    out = torch.empty_like(q)
    lse = torch.empty(b, h, s, device="cuda", dtype=torch.float32)
    cfg = configs.pick_ws(d, causal, s)
    # the launch's grid and arguments as the backend builds them
    plan = launch._gluon_plan(call, cfg, q, k, v, out, None)
    grid = plan[2]

    def descs():
        return [
            TensorDescriptor(t, list(t.shape), list(t.stride()), [1, r, 1, d], launch._nvmma_layout(r, d, t.dtype))
            for t, r in ((q, cfg.block_m), (k, cfg.block_n), (v, cfg.block_n), (out, cfg.block_m))
        ]

    args, constants = launch._gluon_arguments(plan, descs(), lse, None)

    def jit_launch():
        return gluon_fwd.attn_fwd_ws[grid](*args, **constants)

    jit_launch()
    direct_key = ("host_parts", cfg)

    def direct_launch():
        direct.launch(gluon_fwd.attn_fwd_ws, grid, direct_key, *args, **constants)

    direct_launch()  # the first call with a key compiles through Triton and records the kernel

    @triton.jit
    def empty_kernel(x):
        pass

    rows = [
        ("portattn.attention (fwd)", lambda: portattn.attention(q, k, v, causal=causal)),
        ("torch sdpa flash (fwd)", None),
        ("backend.forward", lambda: backend.forward(call, q, k, v)),
        ("launch._forward_gluon", lambda: launch._forward_gluon(call, q, k, v, out, lse)),
        ("launch.forward", lambda: launch.forward(call, q, k, v)),
        ("4 descriptors", descs),
        ("jit launch, descriptors made", jit_launch),
        ("direct.launch, descriptors made", direct_launch),
        ("2 torch.empty", lambda: (torch.empty_like(q), torch.empty(b, h, s, device="cuda"))),
        ("empty triton kernel launch", lambda: empty_kernel[(1,)](lse)),
        (
            "resolve (cache hit)",
            lambda: _api.resolve(
                q,
                k,
                v,
                causal=causal,
                window=None,
                scale=None,
                softcap=None,
                sparsity=None,
                bias=None,
                precision=None,
                return_lse=False,
                backend=None,
                top_left=False,
            ),
        ),  # fmt: skip
    ]
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))

    def sdpa():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

    rows[1] = ("torch sdpa flash (fwd)", sdpa)
    qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
    grad = torch.randn_like(q)

    def fwd_bwd():
        portattn.attention(qg, kg, vg, causal=causal).backward(grad)

    def sdpa_fwd_bwd():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            o = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (qg, kg, vg)),
                                                                 is_causal=causal)  # fmt: skip
        o.backward(grad.transpose(1, 2))

    gcall, _ = _api.resolve(qg, kg, vg, causal=causal, window=None, scale=None, softcap=None, sparsity=None,
                            bias=None, precision=None, return_lse=False, backend=None, top_left=False)  # fmt: skip
    o, lse2 = backend.forward(gcall, qg, kg, vg)
    rows += [
        ("portattn fwd+bwd", fwd_bwd),
        ("torch sdpa flash fwd+bwd", sdpa_fwd_bwd),
        ("backend.backward", lambda: backend.backward(gcall, q, k, v, o, lse2, grad)),
    ]
    print(f"b={b} s={s} h={h} d={d} causal={causal} cfg={cfg} triton={triton.__version__}")
    for name, fn in rows:
        print(f"{name:40s} {per_issue_us(fn):8.1f} us/issue")
    # the backward as autograd runs it (on its own thread): time inside backend.backward per call
    spent = []
    real_backward = type(backend).backward

    def timed_backward(self, *a, **kw):
        t0 = time.perf_counter()
        result = real_backward(self, *a, **kw)
        spent.append(time.perf_counter() - t0)
        return result

    type(backend).backward = timed_backward
    total = per_issue_us(fwd_bwd)
    type(backend).backward = real_backward
    inside = min(spent) * 1e6
    print(f"{'fwd+bwd again, backend.backward inside':40s} {total:8.1f} us/issue, at least {inside:.1f} in backward")


if __name__ == "__main__":
    main()
