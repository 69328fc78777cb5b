"""Print the order of the Gluon forward's key SASS instructions, compiled on the CPU for sm90.

    python3 benchmarks/gluon_sass.py [HEAD_DIM] [--causal] [--counts]
    python3 benchmarks/gluon_sass.py --resources

Runs of the same instruction are folded into one line with a count (`MUFU.EX2 x66`: one softmax
step). This shows where ptxas put the waits for the asynchronous GEMMs (`WARPGROUP.DEPBAR`) relative
to the softmax. ``--causal`` compiles the shipped causal config at 1k (else the non-causal kernel
without ping-pong); ``--counts`` prints instead the static count of each opcode in the whole kernel.
``--resources`` prints instead, for every shipped 16-bit config (``configs.SM90_WS``) and the serial
d=64 candidates of the tuning script, the registers and the stack (spilled registers land there) of
the cubin, from ``cuobjdump -res-usage``.
The kernel is compiled as the CI test does (`tests/test_triton_gluon_compile.py`), with the installed
Triton and its `nvdisasm`; no GPU is needed.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

import triton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import test_triton_gluon_compile  # noqa: E402

MARKERS = re.compile(
    r"(HGMMA\.\w+|WARPGROUP\.DEPBAR\.LE gsb0, 0x\d|MUFU\.EX2|BAR\.SYNC[.\w]* 0x\w+(, 0x\w+)?|SYNCS\.ARRIVE"
    r"|SYNCS\.PHASECHK|BRA)"
)


OPCODE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]+)")


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def resources() -> None:
    """Registers per thread at launch and stack bytes of each config's cubin (Triton's ptxas)."""
    from tune_triton_hopper import FWDWS_SERIAL

    from portattn.backends.triton_hopper import configs

    rows = [(d, causal, f"<= {longest or 'any'}", cfg) for (d, causal), table in configs.SM90_WS.items()
            for longest, cfg in table]  # fmt: skip
    rows += [(64, causal, "candidate", cfg) for cfg in FWDWS_SERIAL for causal in (False, True)]
    print(f"triton {triton.__version__}")
    print("| d | causal | keys | consumers | block_n | stages | regs asked | overlap | REG | STACK |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d, causal, keys, cfg in rows:
        kernel = test_triton_gluon_compile._compile(d, causal, cfg.pingpong, cfg.consumers, cfg.consumer_regs,
                                                    cfg=cfg, schedule=cfg.scheduled)  # fmt: skip
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            usage = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                                   check=True).stdout  # fmt: skip
        reg, stack = (re.search(rf"{key}:(\d+)", usage).group(1) for key in ("REG", "STACK"))
        print(
            f"| {d} | {causal} | {keys} | {cfg.consumers} | {cfg.block_n} | {cfg.stages} | {cfg.consumer_regs} "
            f"| {cfg.overlap} | {reg} | {stack} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("head_dim", nargs="?", type=int, default=64)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--counts", action="store_true")
    ap.add_argument("--resources", action="store_true")
    args = ap.parse_args()
    if args.resources:
        resources()
        return
    if args.causal:
        from portattn.backends.triton_hopper import configs

        cfg = configs.pick_ws(args.head_dim, True, 1024)
        kernel = test_triton_gluon_compile._compile(args.head_dim, True, cfg.pingpong, cfg.consumers,
                                                    cfg.consumer_regs, cfg=cfg)  # fmt: skip
    else:
        kernel = test_triton_gluon_compile._compile(args.head_dim, False, False, 2, regs=240)
    nvdisasm = _tool("nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        sass = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout
    if args.counts:
        opcodes = collections.Counter(m.group(1) for m in map(OPCODE.search, sass.splitlines()) if m)
        print(f"total {sum(opcodes.values())}")
        for name, count in opcodes.most_common(24):
            print(f"{name:10s} {count}")
        return
    previous, count = None, 0
    for line in sass.splitlines():
        match = MARKERS.search(line)
        if not match:
            continue
        if match.group(1) == previous:
            count += 1
            continue
        if previous:
            print(f"{previous} x{count}")
        previous, count = match.group(1), 1
    if previous:
        print(f"{previous} x{count}")


if __name__ == "__main__":
    main()
