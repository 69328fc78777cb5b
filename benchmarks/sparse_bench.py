"""Block-sparse forward, and forward + backward, against FlexAttention with the same masks (issue 8's grid).

    python3 benchmarks/sparse_bench.py [--seqlen 16384] [--heads 16] [--head-dim 128] [--mode fwd,fwdbwd]
        [--json F]

bf16, batch 1. Masks: dense causal; causal sliding window of 1024 keys (``sparse.sliding_window(1024,
0)``, and the same band as ``window=(1024, 0)``); BigBird with a ±512 window and 128 global tokens
(``sparse.bigbird(512, 128, 0)``). FlexAttention runs compiled with ``create_block_mask`` on 128-blocks
of the same predicate. Median of ``triton.testing.do_bench``; the outputs are compared (and in
``fwdbwd`` mode the gradients). ``fwdbwd`` times one forward and ``autograd.grad`` of Q, K and V.
"""

from __future__ import annotations

import argparse
import json

import torch
import triton.testing
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import portattn
from portattn import sparse


def grid_parser() -> argparse.ArgumentParser:
    """The grid's options (also ``sparse_sweep.py``'s)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlen", type=int, default=16384)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--json")
    return ap


def grid_inputs(args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    """``q, k, v, dout``: bf16 ``(1, seqlen, heads, head_dim)``, standard normal, seeded."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    shape = (1, args.seqlen, args.heads, args.head_dim)
    return tuple(torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))


def main() -> None:
    ap = grid_parser()
    ap.add_argument("--mode", default="fwd,fwdbwd")
    args = ap.parse_args()
    s, h, d = args.seqlen, args.heads, args.head_dim
    q, k, v, dout = grid_inputs(args)
    flex = torch.compile(flex_attention)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # Flex's (batch, heads, seqlen, dim)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    leaves_t = [t.transpose(1, 2).detach().clone().requires_grad_() for t in (q, k, v)]
    cases = [
        ("dense causal", lambda b, hh, i, j: i >= j, dict(causal=True)),
        ("causal window 1024 (pattern)", lambda b, hh, i, j: (i >= j) & (i - j <= 1024),
         dict(sparsity=sparse.sliding_window(1024, 0))),
        ("causal window 1024 (window=)", lambda b, hh, i, j: (i >= j) & (i - j <= 1024), dict(window=(1024, 0))),
        ("bigbird ±512, 128 global", lambda b, hh, i, j: ((i - j).abs() <= 512) | (i < 128) | (j < 128),
         dict(sparsity=sparse.bigbird(512, 128, 0))),
    ]  # fmt: skip
    rows = []
    for mode in args.mode.split(","):
        for name, mask_mod, kw in cases:
            block_mask = create_block_mask(mask_mod, None, None, s, s, device="cuda", BLOCK_SIZE=128)
            if mode == "fwd":
                ours = lambda kw=kw: portattn.attention(q, k, v, backend="triton_hopper", **kw)  # noqa: E731
                theirs = lambda bm=block_mask: flex(qt, kt, vt, block_mask=bm).transpose(1, 2)  # noqa: E731
            else:

                def ours(kw=kw):
                    return torch.autograd.grad(portattn.attention(*leaves, backend="triton_hopper", **kw), leaves, dout)

                def theirs(bm=block_mask):
                    grads = torch.autograd.grad(flex(*leaves_t, block_mask=bm), leaves_t, dout.transpose(1, 2))
                    return [g.transpose(1, 2) for g in grads]

            got, want = ours(), theirs()
            pairs = zip(got, want, strict=True) if mode != "fwd" else [(got, want)]
            diff = max((a.float() - b.float()).abs().max().item() for a, b in pairs)
            t_ours = triton.testing.do_bench(ours, warmup=25, rep=200, return_mode="median")
            t_flex = triton.testing.do_bench(theirs, warmup=25, rep=200, return_mode="median")
            density = kw["sparsity"].density(s, s) if "sparsity" in kw else None
            rows.append(dict(mode=mode, mask=name, ours_ms=round(t_ours, 3), flex_ms=round(t_flex, 3),
                             ratio=round(t_ours / t_flex, 2), max_abs_diff=diff, density=density))  # fmt: skip
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, seqlen {s}, heads {h}, d {d}, bf16")
    print("| mode | mask | blocks visited | triton_hopper ms | Flex ms | time / Flex's | max abs diff vs Flex |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        dens = "-" if r["density"] is None else f"{r['density']:.1%}"
        print(f"| {r['mode']} | {r['mask']} | {dens} | {r['ours_ms']} | {r['flex_ms']} | {r['ratio']} "
              f"| {r['max_abs_diff']:.3g} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
