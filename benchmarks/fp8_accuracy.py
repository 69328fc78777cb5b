"""FP8 accuracy on inputs with outliers (FlashAttention-3's experiment), against the float64 reference.

    python3 benchmarks/fp8_accuracy.py [--seqlen 1024] [--head-dim 128] [--batch 2] [--heads 8]

Q, K, V are standard normal with 0.1% of entries drawn with standard deviation 10. Prints the RMSE
of (a) the 16-bit kernel, (b) FP8 with one scale per tensor and no rotation, (c) FP8 with block
scales, (d) FP8 with block scales and the Hadamard rotation (what ``precision="fp8"`` runs). (b) is
plain FP8: P is cast as it is, in [0, 1]; (b+) and the others cast P at 2**8 times its value, as
FA3's kernel does, so that it uses e4m3's range. On a
CPU set ``TRITON_INTERPRET=1`` and use small sizes.
"""

from __future__ import annotations

import argparse
import os

import torch

import portattn
from portattn._call import normalize
from portattn.backends.triton_hopper import launch
from portattn.backends.triton_hopper.quant import outlier_inputs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    args = ap.parse_args()
    interpreting = os.environ.get("TRITON_INTERPRET", "") not in ("", "0")
    device = "cpu" if interpreting else "cuda"
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.seqlen, args.heads, args.head_dim)
    q, k, v = (outlier_inputs(shape, gen).to(device=device, dtype=dtype) for _ in range(3))
    exact = portattn.attention(q, k, v, causal=args.causal, backend="reference").double()
    call = normalize(q, k, v, causal=args.causal, window=None, scale=None, softcap=None, sparsity=None, bias=None,
                     precision="fp8", return_lse=False, top_left=False, requires_grad=False)  # fmt: skip
    rows = {
        f"(a) {args.dtype} kernel": portattn.attention(q, k, v, causal=args.causal, backend="triton_hopper"),
        "(b) FP8, per-tensor scale, no rotation": launch.forward_fp8(
            call, q, k, v, rotate=False, per_tensor=True, p_shift=0.0
        )[0],
        "(b+) as (b), P scaled by 2**8": launch.forward_fp8(call, q, k, v, rotate=False, per_tensor=True)[0],
        "(c) FP8, block scales": launch.forward_fp8(call, q, k, v, rotate=False)[0],
        "(d) FP8, block scales + rotation": launch.forward_fp8(call, q, k, v)[0],
    }
    rmse = {name: (out.double() - exact).pow(2).mean().sqrt().item() for name, out in rows.items()}
    print(f"shape {shape} {args.dtype} causal={args.causal} on {device}; outliers: 0.1% of entries, std 10")
    print("| variant | RMSE vs float64 | (b) / this |")
    print("|---|---|---|")
    base = rmse["(b) FP8, per-tensor scale, no rotation"]
    for name, err in rmse.items():
        print(f"| {name} | {err:.3e} | {base / err:.2f} |")


if __name__ == "__main__":
    main()
