"""Print the order of the Gluon forward's key SASS instructions, compiled on the CPU for sm90.

    python3 benchmarks/gluon_sass.py [HEAD_DIM]

Runs of the same instruction are folded into one line with a count (`MUFU.EX2 x66`: one softmax
step). This shows where ptxas put the waits for the asynchronous GEMMs (`WARPGROUP.DEPBAR`) relative
to the softmax. The kernel is compiled as the CI test does (`tests/test_triton_gluon_compile.py`), with
the installed Triton and its `nvdisasm`; no GPU is needed.
"""

from __future__ import annotations

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


def main() -> None:
    head_dim = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    kernel = test_triton_gluon_compile._compile(head_dim, False, False, 2, regs=240)
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        sass = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True, check=True).stdout
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
