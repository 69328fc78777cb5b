"""Where one call's host time goes, part by part (the Gluon forward's path and the backward's).

    python3 benchmarks/host_parts.py [--seqlen 1024] [--head-dim 128] [--causal]

Each part is issued in rounds of 40 calls; the time is the host's per issue in the best round.
"""

from __future__ import annotations

import argparse
import time

import torch

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--causal", action="store_true")
    args = ap.parse_args()
    import triton
    from triton import knobs
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from portattn.backends.triton_hopper import configs, gluon_fwd, launch

    s, d = args.seqlen, args.head_dim
    b, h = max(1, 16384 // s), 2048 // d
    q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    causal = args.causal
    call, backend = _api.resolve(q, k, v, causal=causal, window=None, scale=None, softcap=None, sparsity=None,
                                 bias=None, precision=None, return_lse=False, backend=None, top_left=False)  # fmt: skip
    out = torch.empty_like(q)
    lse = torch.empty(b, h, s, device="cuda", dtype=torch.float32)
    cfg = configs.pick_ws(d, causal, s)
    hi = call.band[1]

    def descs():
        return [
            TensorDescriptor(t, list(t.shape), list(t.stride()), [1, r, 1, d], launch._nvmma_layout(r, d, t.dtype))
            for t, r in ((q, cfg.block_m), (k, cfg.block_n), (v, cfg.block_n), (out, cfg.block_m))
        ]

    dq, dk, dv, do = descs()
    n_m = triton.cdiv(s, cfg.consumers * cfg.block_m)
    n_tiles = n_m * b * h
    programs = min(n_tiles, launch._sm_count(q.device)) if cfg.persistent else n_tiles
    const = dict(GROUP=1, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_D=d, STAGES=cfg.stages, HAS_HI=hi is not None,
                 PINGPONG=cfg.pingpong, CONSUMERS=cfg.consumers, CONSUMER_REGS=cfg.consumer_regs)  # fmt: skip
    rt = (s, s, h, hi if hi is not None else 0, call.scale * 1.4426950408889634, n_m, n_tiles)

    def jit_launch():
        return gluon_fwd.attn_fwd_ws[(programs,)](dq, dk, dv, do, lse, *rt, **const, num_warps=4)

    kernel = jit_launch()
    stream = torch.cuda.current_stream().cuda_stream
    flat = [dq, dk, dv, do, lse, *rt, *const.values()]

    def direct():
        kernel.run(programs, 1, 1, stream, kernel.function, kernel.packed_metadata, None,
                   knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *flat)  # fmt: skip

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
        ("direct kernel.run, descriptors made", direct),
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
