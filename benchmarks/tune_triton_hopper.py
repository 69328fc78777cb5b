"""Sweep launch configs of ``triton_hopper`` on a GPU and print the fastest per (kernel, head dim, causal).

    python3 benchmarks/tune_triton_hopper.py [--seqlen 4096] [--tokens 16384] [--hidden 2048] [--json F]
        [--kernels fwd,dkdv,dq] [--head-dims 64,128] [--causal 0,1] [--ws-current] [--ws-wide] [--ws-scheduled]
        [--ws-configs 'F,F,...;F,F,...'] [--rounds N]

``PORTATTN_TRITON_TMA`` (0, 1, host) forces the tile path; ``--json`` appends every result as a line.
Kernel ``fwd`` is the Triton forward (set ``PORTATTN_TRITON_GLUON=0`` at head dims 64 and 128, where
the Gluon forward takes the call); ``fwdws`` is the Gluon forward.
``--ws-configs`` times the given ``WsConfig``s instead of the sweep (fields in order, flags as 0/1);
``--rounds`` times the space that many times over, interleaved, so that host drift shows.

Each config is checked against torch SDPA before it is timed (a fast wrong config must not win).
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch
import triton.testing

import portattn
from portattn.backends.triton_hopper import configs
from portattn.backends.triton_hopper.configs import Config, WsConfig

FWD = [Config(*c) for c in [(128, 64, 4, 2), (128, 64, 4, 3), (128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 8, 3),
                            (64, 64, 4, 3), (128, 32, 4, 3), (128, 128, 4, 2), (64, 128, 4, 3), (64, 64, 4, 4),
                            (64, 64, 4, 2), (64, 32, 4, 3), (64, 128, 4, 2)]]  # fmt: skip
DKDV = [Config(*c) for c in [(32, 64, 4, 2), (32, 128, 4, 3), (32, 128, 8, 3), (64, 64, 4, 3), (64, 128, 8, 2),
                             (64, 128, 8, 3), (32, 64, 4, 3), (64, 64, 8, 2), (32, 64, 4, 4),
                             (64, 64, 4, 2)]]  # fmt: skip
FWD8 = [Config(*c) for c in [(128, 128, 8, 3), (128, 128, 8, 2), (64, 128, 4, 3), (64, 128, 4, 4), (64, 128, 4, 2),
                             (64, 256, 4, 2), (128, 256, 8, 2), (64, 64, 4, 3), (128, 64, 8, 3)]]  # fmt: skip
DQ = [Config(*c) for c in [(64, 32, 4, 3), (128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 2), (128, 32, 8, 2),
                           (64, 32, 4, 2), (128, 64, 4, 2), (64, 64, 4, 3), (64, 64, 4, 4),
                           (64, 128, 4, 3)]]  # fmt: skip

# (block_m, block_n, stages, consumer_regs, pingpong, persistent, consumers); 3 consumers fit d=64 only.
# Key blocks of 64 and 2-stage rings lost everywhere in the first sweeps (results/h100_tune_fwdws_*).
FWDWS = [WsConfig(64, 128, 3, 240, pp, pers) for pp in (False, True) for pers in (False, True)]
FWDWS3 = [WsConfig(64, 128, 3, 160, False, pers, 3) for pers in (False, True)]
# one key block at a time per consumer (overlap=False), d=64: four consumers fit the registers on 64-key
# blocks only (ptxas spills at 128), and three on 128-key blocks
FWDWS_SERIAL = [WsConfig(64, 64, st, 120, False, True, 4, overlap=False) for st in (4, 6)] + [
    WsConfig(64, 128, 3, 160, False, True, 3, overlap=False)
]
# --ws-wide adds, at d=64: 4-stage rings and 256-key blocks (fewer, longer softmax steps)
# the Gluon forward at precision="fp8" (fwdws8), per head dim
# (the persistent ones also with permute_v: V^T's keys in P's register order)
FWDWS8 = {
    d: [
        WsConfig(64, bn, st, 240, pp, pers, permute_v=pv)
        for bn, st in blocks
        for pp in (False, True)
        for pers in (False, True)
        for pv in ((False, True) if pers else (False,))
    ]
    for d, blocks in ((64, ((128, 3), (128, 4))), (128, ((128, 3), (128, 4))), (256, ((64, 3), (64, 2))))
}
WS_FLAGS = ("pingpong", "persistent", "scheduled", "overlap", "permute_v")
FWDWS_WIDE = [WsConfig(64, 128, 4, 240, pp, True) for pp in (False, True)] + [
    WsConfig(64, 256, 2, 240, pp, True) for pp in (False, True)
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlen", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument(
        "--kernels", default="fwd,dkdv,dq", help="of fwd, fwdws, fwd8 and fwdws8 (precision='fp8'), dkdv, dq"
    )
    ap.add_argument("--causal", default="0,1", help="0 and/or 1")
    ap.add_argument("--ws-current", action="store_true", help="fwdws: only the shipped config")
    ap.add_argument("--ws-wide", action="store_true", help="fwdws at d=64: 4 stages and 256-key blocks too")
    ap.add_argument("--ws-scheduled", action="store_true", help="fwdws: each config persistent, snake and scheduled")
    ap.add_argument(
        "--ws-configs",
        help="fwdws: these configs instead, ';'-separated WsConfig fields, e.g. "
        "'64,128,3,240,0,1,2;64,64,6,120,0,1,4,0,0'",
    )
    ap.add_argument("--rounds", type=int, default=1, help="time the whole space this many times, interleaved")
    ap.add_argument("--json", help="append one JSON line per (config, shape) result to this file")
    args = ap.parse_args()
    for d in map(int, args.head_dims.split(",")):
        for causal in (c == "1" for c in args.causal.split(",")):
            b, h, s = max(1, args.tokens // args.seqlen), args.hidden // d, args.seqlen
            q, k, v = (
                torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)
            )
            ref = torch.nn.functional.scaled_dot_product_attention(
                *(t.transpose(1, 2) for t in (q, k, v)), is_causal=causal
            ).transpose(1, 2)
            dout = torch.randn_like(ref)
            ref_grads = torch.autograd.grad(ref, (q, k, v), dout)
            flops = 4 * b * h * s * s * d / (2 if causal else 1)
            configs.WS_OVERRIDE.clear()  # pick_ws must see the shipped table
            ws_d64 = FWDWS3 + FWDWS_SERIAL if d <= 64 else []
            ws_space = [configs.pick_ws(d, causal, s)] if args.ws_current else FWDWS + ws_d64
            if args.ws_wide and d <= 64:
                ws_space = ws_space + FWDWS_WIDE
            if args.ws_configs:
                ws_space = [WsConfig(*(int(x) for x in spec.split(","))) for spec in args.ws_configs.split(";")]
                ws_space = [cfg._replace(**{f: bool(getattr(cfg, f)) for f in WS_FLAGS}) for cfg in ws_space]
            if args.ws_scheduled:
                ws_space = [cfg._replace(persistent=True, scheduled=s) for cfg in ws_space for s in (False, True)]
            ws8_space = [configs.pick_ws(d, causal, s, fp8=True)] if args.ws_current else FWDWS8[d]
            spaces = {"fwd": FWD, "fwdws": ws_space, "fwd8": FWD8, "fwdws8": ws8_space, "dkdv": DKDV, "dq": DQ}
            for kernel, space in spaces.items():
                if kernel not in args.kernels.split(","):
                    continue
                results = []
                for cfg in space * args.rounds:
                    configs.OVERRIDE.clear()
                    configs.WS_OVERRIDE[:] = [cfg] if kernel.startswith("fwdws") else []
                    if not kernel.startswith("fwdws"):
                        configs.OVERRIDE[kernel] = cfg
                    try:
                        precision = "fp8" if kernel in ("fwd8", "fwdws8") else None
                        if kernel in ("fwd", "fwdws", "fwd8", "fwdws8"):
                            fn = partial(portattn.attention, q.detach(), k.detach(), v.detach(), causal=causal,
                                         precision=precision)  # fmt: skip
                            err = (fn() - ref).abs().max().item()
                            work = flops
                        else:
                            out = portattn.attention(q, k, v, causal=causal)
                            fn = partial(torch.autograd.grad, out, (q, k, v), dout, retain_graph=True)
                            grads = fn()
                            idx = {"dkdv": (1, 2), "dq": (0,)}[kernel]
                            err = max((grads[i] - ref_grads[i]).abs().max().item() for i in idx)
                            work = 2.5 * flops  # the backward's share of 3.5x
                        if not err < (0.5 if precision else 0.1):  # FP8's max error is larger
                            results.append((0.0, cfg, f"WRONG err={err:.3g}"))
                            continue
                        ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
                        results.append((work / ms / 1e9, cfg, f"{ms:.3f} ms err={err:.2g}"))
                    except Exception as exc:  # a config that does not compile (shared memory) is skipped
                        results.append((0.0, cfg, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"))
                if args.json:
                    with open(args.json, "a") as f:
                        for tf, cfg, note in results:
                            rec = {"kernel": kernel, "d": d, "causal": causal, "seqlen": s, "config": list(cfg)}
                            f.write(json.dumps({**rec, "tflops": round(tf, 1), "note": note}) + "\n")
                results.sort(key=lambda r: -r[0])
                best = results[0]
                print(f"d={d} causal={causal} {kernel}: best {best[1]} {best[0]:.0f} TF/s ({best[2]})")
                for tf, cfg, note in results[1:4]:
                    print(f"    {cfg} {tf:.0f} TF/s ({note})")
    configs.OVERRIDE.clear()
    configs.WS_OVERRIDE.clear()


if __name__ == "__main__":
    main()
