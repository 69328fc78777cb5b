"""Where WMMA m16n16k16 puts each element on this GPU, as cuda_volta's probe reads it: for every
lane, the (row, column) of each slot of the fp32 accumulator and of each element of the fp16 A
operand; then whether the forward's register softmax can use that order, and with which facts.

    python3 benchmarks/wmma_layout.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json

import torch

from portattn.backends.cuda_volta import read_wmma_order, register_softmax_facts, wmma_order


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the order and the facts to this file")
    args = ap.parse_args()
    order = read_wmma_order(torch.cuda.current_device())
    facts = register_softmax_facts(torch.cuda.current_device())
    name = torch.cuda.get_device_name()
    print(f"{name} (cc {'.'.join(map(str, torch.cuda.get_device_capability()))}): (row, col) per element")
    for lane in range(32):
        print(f"lane {lane:2d}  C {[divmod(x, 16) for x in order.c[lane]]}")
        print(f"         A {[divmod(x, 16) for x in order.a[lane]]}")
    print(f"same as mma.m16n8k16's order: {order == wmma_order.mma_order()}")
    print(f"register softmax: {facts}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "c": order.c, "a": order.a, "facts": facts and facts._asdict()}, f)


if __name__ == "__main__":
    main()
