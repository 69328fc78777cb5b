"""What ptxas makes of ``cuda_volta``'s forward, without a GPU: per template instance, registers and
spills, and the main loop's instructions on the path of an unmasked key block (the common case),
with its tensor-core MMAs and shared-memory fragment loads.

    python3 benchmarks/volta_sass.py [--arch sm_90] [--kernels fwd,dkdv,dq] [--head-dims 64,128]
        [--configs 'WARPS,QREGS;...']

Needs ``nvcc`` on PATH and ``cuobjdump`` (on PATH or in the triton wheel). The register softmax is
compiled with mma.m16n8k16's element order (what the probe reads on sm80+ GPUs).

On GPUs that issue one instruction per clock per scheduler, a loop with many more instructions than
its MMAs can keep busy is issue-bound: the count per key block is a proxy for speed where no GPU is
at hand, never a substitute for ``portattn bench``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from portattn.backends.cuda_volta import plan, wmma_order

INSTRUCTION = re.compile(r"^\s+/\*([0-9a-f]+)\*/\s+(.*?)\s*;", re.M)
BRANCH = re.compile(r"^(@!?U?P\w+\s+)?BRA\b.*?0x([0-9a-f]+)")


def cuobjdump() -> str:
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("cuobjdump")
    if not found:
        raise SystemExit("no cuobjdump: neither on PATH nor in the triton wheel")
    return found


def main_loop(sass: str) -> dict[str, int]:
    """The longest backward branch's body: its length, and its length on the path that takes every
    unconditional forward branch (which skips the masked block's code, placed as an else region)."""
    code = [(int(a, 16), text) for a, text in INSTRUCTION.findall(sass)]
    loops = []
    for address, text in code:
        m = BRANCH.match(text)
        if m and int(m.group(2), 16) < address:
            loops.append((int(m.group(2), 16), address))
    start, end = max(loops, key=lambda loop: loop[1] - loop[0])
    body = [(a, t) for a, t in code if start <= a <= end]
    skipped = 0
    for address, text in body:
        m = BRANCH.match(text)
        if m and not m.group(1) and int(m.group(2), 16) > address:
            skipped += (int(m.group(2), 16) - address) // 16 - 1
    ops = Counter(t.split()[1] if t.startswith("@") else t.split()[0] for _, t in body)
    family = Counter()
    for op, n in ops.items():
        family[op.split(".")[0]] += n
    return {"loop": len(body), "unmasked": len(body) - skipped, "HMMA": family["HMMA"], "LDSM": family["LDSM"],
            "LDS": family["LDS"], "LDL": family["LDL"], "STL": family["STL"]}  # fmt: skip


def instances(kernels: list[str], head_dims: list[int], configs: str):
    """(row label, template instance) per requested kernel, head dim and forward config."""
    for head_dim in head_dims:
        if "fwd" in kernels:
            for item in configs.split(";"):
                warps, q_regs = (int(x) for x in item.split(","))
                for softmax in ("register", "shared"):
                    flags = f"{'true' if q_regs else 'false'}, {'true' if softmax == 'register' else 'false'}"
                    label = f"fwd | {head_dim} | {warps} warps, Q in {'registers' if q_regs else 'shared'}, {softmax}"
                    yield label, f"portattn_sm70::flash_fwd_sm70<{head_dim}, {warps}, {flags}, false, false>"
        for kernel in ("dkdv", "dq"):
            if kernel in kernels:
                yield f"{kernel} | {head_dim} | -", f"portattn_sm70::flash_bwd_{kernel}_sm70<{head_dim}, false, false>"


def resources(nvcc: str, source: str, name: str, arch: str, tmp: Path) -> tuple[str, str, dict[str, int]]:
    """ptxas's registers and spill-store bytes for one instance, and its main loop's counts."""
    unit, cubin = tmp / "unit.cu", tmp / "unit.cubin"
    unit.write_text(source + f"\nconst void* instance = reinterpret_cast<const void*>(&{name});\n")
    options = [o.replace("--use_fast_math", "-use_fast_math") for o in plan.NVRTC_OPTIONS]
    built = subprocess.run([nvcc, *options, f"-arch={arch}", "-cubin", "-Xptxas", "-v", "-diag-suppress", "177",
                            str(unit), "-o", str(cubin)], capture_output=True, text=True, timeout=600)  # fmt: skip
    if built.returncode:
        raise SystemExit(built.stderr[-3000:])
    regs = re.search(r"Used (\d+) registers", built.stderr).group(1)
    spill = re.search(r"(\d+) bytes spill stores", built.stderr).group(1)
    sass = subprocess.run([cuobjdump(), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    return regs, spill, main_loop(sass)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--kernels", default="fwd", help="comma list of fwd, dkdv, dq")
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument("--configs", default="4,1;4,0;8,1;8,0", help="forward configs: WARPS,QREGS;...")
    args = ap.parse_args()
    nvcc = shutil.which("nvcc")
    if not nvcc:
        raise SystemExit("nvcc is not on PATH")
    source = plan.source(wmma_order.register_softmax(wmma_order.mma_order()))
    print(
        "| kernel | head dim | config | registers | spill bytes | loop | unmasked path | HMMA | LDSM | LDS | LDL/STL |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        rows = instances(args.kernels.split(","), [int(d) for d in args.head_dims.split(",")], args.configs)
        for label, name in rows:
            regs, spill, loop = resources(nvcc, source, name, args.arch, Path(tmp))
            print(f"| {label} | {regs} | {spill} | {loop['loop']} | {loop['unmasked']} | {loop['HMMA']} "
                  f"| {loop['LDSM']} | {loop['LDS']} | {loop['LDL']}/{loop['STL']} |")  # fmt: skip


if __name__ == "__main__":
    main()
