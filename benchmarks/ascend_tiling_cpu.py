"""The ``ascend`` backend's two-level tiling path on the CPU against ``portable``, and the tiling-mask's size.

(1) Time: ``ascend.tiling`` with its default tiles (128 query rows x stacks of 512 keys, inner matmul
tiles of 128 keys) against ``portable`` with its defaults (256 x 256 tiles, one matmul per tile), same
data, same ``AttentionCall``, both called directly (no dispatch). Forward under ``torch.no_grad()`` and
backward (recomputation from ``out``/``lse``) timed separately, interleaved (the order alternates every
repeat), medians of ``--repeats`` after one warm-up. The target is ``ratio <= 1.5``.

(2) Memory: the compressed 2048x2048 bool mask ``npu_fusion_attention`` takes for causal/band masks
(sparse_mode 2/3/4) against a dense ``seqlen x seqlen`` bool mask; computed from sizes, the dense one
is never allocated.

    python benchmarks/ascend_tiling_cpu.py
    python benchmarks/ascend_tiling_cpu.py --seqlens 2048,4096 --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from portattn import _call
from portattn.backends.ascend import tiling
from portattn.backends.portable import PortableBackend

COMPRESSED_MASK = 2048  # COMP_TRIU_MASK_DIM_LEN


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _interleaved(fns: dict[str, object], repeats: int) -> dict[str, float]:
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(_ms(fns[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def speed(args) -> None:
    b, h, d = args.batch, args.heads, args.head_dim
    portable = PortableBackend()
    print(
        f"### Time, float32, B={b}, H={h}, D={d}, {torch.get_num_threads()} threads, median of {args.repeats} "
        f"(interleaved); ascend.tiling tiles {tiling.Q_TILE}x{tiling.KV_STACK}/{tiling.INNER}, "
        f"portable tiles {portable.block_q}x{portable.block_k}\n"
    )
    print("| seqlen | causal | pass | portable ms | ascend.tiling ms | ratio tiling/portable | max abs diff |")
    print("| ---: | :---: | :--- | ---: | ---: | ---: | ---: |")
    for seqlen in args.seqlens:
        for causal in (False, True):
            gen = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(b, seqlen, h, d, generator=gen) for _ in range(3))
            dout = torch.randn(b, seqlen, h, d, generator=gen)
            call = _call.normalize(
                q, k, v, bias=None, precision=None, return_lse=True, top_left=False, scale=None,
                sparsity=None, causal=causal, window=None, softcap=None,
            )  # fmt: skip
            with torch.no_grad():
                out_p, lse_p = portable.forward(call, q, k, v)
                out_t, lse_t = tiling.forward(call, q, k, v)
                fwd_diff = (out_p - out_t).abs().max().item()
                fwd = _interleaved(
                    {
                        "portable": partial(portable.forward, call, q, k, v),
                        "tiling": partial(tiling.forward, call, q, k, v),
                    },
                    args.repeats,
                )
                g_p = portable.backward(call, q, k, v, out_p, lse_p, dout)
                g_t = tiling.backward(call, q, k, v, out_p, lse_p, dout)
                bwd_diff = max((a - c).abs().max().item() for a, c in zip(g_p, g_t, strict=True))
                bwd = (
                    _interleaved(
                        {
                            "portable": partial(portable.backward, call, q, k, v, out_p, lse_p, dout),
                            "tiling": partial(tiling.backward, call, q, k, v, out_p, lse_p, dout),
                        },
                        args.repeats,
                    )
                    if not args.skip_backward
                    else None
                )
            for name, t, diff in (("forward", fwd, fwd_diff), ("backward", bwd, bwd_diff)):
                if t is None:
                    continue
                ratio = t["tiling"] / t["portable"]
                print(
                    f"| {seqlen} | {'yes' if causal else 'no'} | {name} | {t['portable']:.1f} | {t['tiling']:.1f} "
                    f"| {ratio:.2f} | {diff:.1e} |",
                    flush=True,
                )


def memory(args) -> None:
    print("\n### Mask memory, torch.bool (1 byte per element)\n")
    print("| mask | shape | bytes | MiB |")
    print("| :--- | :--- | ---: | ---: |")
    compressed = COMPRESSED_MASK * COMPRESSED_MASK * torch.tensor([], dtype=torch.bool).element_size()
    actual = torch.ones(COMPRESSED_MASK, COMPRESSED_MASK, dtype=torch.bool).triu_(1)  # the one that exists
    assert actual.untyped_storage().nbytes() == compressed
    print(
        f"| compressed (sparse_mode 2/3/4) | {COMPRESSED_MASK}x{COMPRESSED_MASK} "
        f"| {compressed} | {compressed / 2**20:g} |"
    )
    for seqlen in args.mask_seqlens:
        dense = seqlen * seqlen  # never allocated
        print(f"| dense | {seqlen}x{seqlen} | {dense} | {dense / 2**20:g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    parser.add_argument("--seqlens", type=ints, default=[4096])
    parser.add_argument("--mask-seqlens", type=ints, default=[32768])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-backward", action="store_true")
    args = parser.parse_args()
    speed(args)
    memory(args)


if __name__ == "__main__":
    main()
