"""Time ``cuda_volta``'s forward under each launch config and softmax path, against torch SDPA's
mem-efficient kernel in the same run, on fp16 inputs shaped as ``portattn bench`` shapes them
(16384 tokens per batch, hidden 2048).

    python3 benchmarks/tune_cuda_volta.py [--seqlens 1024,4096,16384] [--head-dims 64,128] [--causal 0,1]
        [--configs 'WARPS,QREGS;...'] [--json F]

A config is ``plan.FwdConfig`` (warps per block, Q's fragments held in registers); each runs with the
register softmax (where this GPU's WMMA order allows it) and with the shared-memory one. Every
config's output is checked against SDPA in fp32 before it is timed: a fast wrong one must not win.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import partial

import _grid
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import portattn
from portattn.backends import cuda_volta
from portattn.backends.cuda_volta import plan
from portattn.cli.bench import _timer, flops


def parse_configs(text: str) -> list[plan.FwdConfig]:
    configs = []
    for item in text.split(";"):
        warps, q_regs = item.split(",")
        configs.append(plan.FwdConfig(int(warps), bool(int(q_regs))))
    return configs


def time_shape(head_dim: int, seqlen: int, causal: bool, configs, softmaxes, timer, json_path) -> None:
    batch, heads, q, k, v = _grid.inputs(seqlen, head_dim, torch.float16)
    sdpa = [t.transpose(1, 2) for t in (q, k, v)]
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):  # in fp32: the math kernel's scores would not fit at 16k
        want = F.scaled_dot_product_attention(*(t.float() for t in sdpa), is_causal=causal)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        anchor_ms = timer(partial(F.scaled_dot_product_attention, *sdpa, is_causal=causal))
    work = flops(batch, heads, seqlen, head_dim, causal, "fwd")
    anchor = work / anchor_ms / 1e9
    print(f"d={head_dim} seqlen={seqlen} causal={int(causal)}: mem-efficient {anchor:.0f} TF/s")
    run = partial(portattn.attention, q, k, v, causal=causal, backend="cuda_volta")
    shipped = plan.FWD_CONFIGS[plan.width(head_dim)]
    results = []
    for config in configs:
        for softmax in softmaxes:
            plan.FWD_CONFIGS[plan.width(head_dim)] = config
            os.environ[cuda_volta.SOFTMAX_ENV] = "shared" if softmax == "shared" else "auto"
            try:
                err = (run().float().transpose(1, 2) - want).abs().max().item()
                tflops = work / timer(run) / 1e9 if err < 2e-2 else float("nan")
            except Exception as exc:  # a config that does not fit (shared memory, registers)
                err = tflops = float("nan")
                print(f"  {config} {softmax}: {type(exc).__name__}: {str(exc)[:120]}")
            results.append((tflops, config, softmax))
            mark = " (shipped)" if config == shipped else ""
            print(f"  warps={config.warps} q_regs={int(config.q_in_registers)} {softmax:8s}{mark}: "
                  f"{tflops:6.1f} TF/s  {tflops / anchor:.2f}x  max err {err:.1e}")  # fmt: skip
            if json_path:
                row = {"head_dim": head_dim, "seqlen": seqlen, "causal": causal, "warps": config.warps,
                       "q_in_registers": config.q_in_registers, "softmax": softmax, "tflops": tflops,
                       "anchor_tflops": anchor, "max_err": err}  # fmt: skip
                with open(json_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
    plan.FWD_CONFIGS[plan.width(head_dim)] = shipped
    os.environ.pop(cuda_volta.SOFTMAX_ENV, None)
    valid = [r for r in results if r[0] == r[0]]
    if valid:
        best = max(valid, key=lambda r: r[0])
        print(f"  best: {best[1]} {best[2]} {best[0]:.1f} TF/s ({best[0] / anchor:.2f}x mem-efficient)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqlens", default="1024,4096,16384")
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument("--causal", default="0")
    ap.add_argument("--configs", default="4,1;4,0;8,1;8,0")
    ap.add_argument("--json", help="append each result to this file as a JSON line")
    args = ap.parse_args()
    timer = _timer(torch.device("cuda"), repeats=20)
    register_ok = cuda_volta.register_softmax_facts(torch.cuda.current_device()) is not None
    softmaxes = ["register", "shared"] if register_ok else ["shared"]
    print(f"{torch.cuda.get_device_name()}: register softmax {'allowed' if register_ok else 'not allowed'} here")
    configs = parse_configs(args.configs)
    for head_dim in map(int, args.head_dims.split(",")):
        for seqlen in map(int, args.seqlens.split(",")):
            for causal in args.causal.split(","):
                time_shape(head_dim, seqlen, bool(int(causal)), configs, softmaxes, timer, args.json)


if __name__ == "__main__":
    main()
