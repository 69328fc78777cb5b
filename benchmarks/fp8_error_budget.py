"""Where FP8 attention's error comes from, on the CPU: float64 emulation of each quantization alone.

    python3 benchmarks/fp8_error_budget.py [--seqlen 1024] [--head-dim 128]

Same inputs as ``fp8_accuracy.py`` (standard normal with 0.1% outliers of standard deviation 10, the
same seed). Each row quantizes some of Q, K, V to e4m3 (block scales of 128 rows, optionally after the
rotation) and computes attention exactly on the dequantized values: P is not quantized, so the rows
show what Q, K and V's quantization alone costs, to compare with the kernel's RMSE on a GPU.
"""

from __future__ import annotations

import argparse

import torch

import portattn
from portattn.backends.triton_hopper import quant


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--head-dim", type=int, default=128)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    shape = (2, args.seqlen, 8, args.head_dim)
    q, k, v = (quant.outlier_inputs(shape, gen).to(torch.bfloat16) for _ in range(3))
    exact = portattn.attention(q, k, v, backend="reference").double()
    n = args.head_dim
    m = quant.rotation(n, dtype=torch.float64)

    def blocks(x: torch.Tensor, rotate: bool) -> torch.Tensor:
        x = quant.rotate(x.double()) if rotate else x.double()
        back = quant.dequantize_blocks(*quant.quantize_blocks(x, 128), 128)
        return (back @ m.T if rotate else back).float()  # undo the rotation: the same values, quantized

    def per_tensor(x: torch.Tensor) -> torch.Tensor:
        values, scale = quant.quantize_tensor(x)
        return (values.double() * scale).float()

    exact_in = [t.float() for t in (q, k, v)]
    rows = {
        "(b) per-tensor Q, K, V": [per_tensor(t) for t in (q, k, v)],
        "(c) block scales Q, K, V": [blocks(t, False) for t in (q, k, v)],
        "(d) rotated Q, K + block scales; V block scales": [blocks(q, True), blocks(k, True), blocks(v, False)],
        "    of which Q, K only": [blocks(q, True), blocks(k, True), exact_in[2]],
        "    of which V only": [*exact_in[:2], blocks(v, False)],
        "    V rotated too (output un-rotated)": [blocks(q, True), blocks(k, True), blocks(v, True)],
    }
    print(f"shape {shape}, float64 emulation, P not quantized; RMSE vs the exact result")
    for name, (qx, kx, vx) in rows.items():
        err = (portattn.attention(qx, kx, vx, backend="reference").double() - exact).pow(2).mean().sqrt()
        print(f"{name:50s} {err.item():.3e}")


if __name__ == "__main__":
    main()
