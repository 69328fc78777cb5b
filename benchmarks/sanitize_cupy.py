"""Small shapes for ``compute-sanitizer`` (memcheck, racecheck) on a CuPy-compiled backend: forward and
gradients of odd lengths, GQA, causal with ``seqlen_q != seqlen_k``, window with softcap, a (b, h, s, d)
layout, at both kernel widths; the backward both as one kernel (dQ by atomics) and as two
(``PORTATTN_CUDA_AMPERE_DQ=separate``).

Usage: ``compute-sanitizer --tool memcheck python3 benchmarks/sanitize_cupy.py [backend]`` (cuda_ampere by
default). Exits non-zero if any result differs from the reference (the sanitizer reports bad accesses).
"""

from __future__ import annotations

import os
import sys

import torch

from portattn.testing import Case, run_case

CASES = [
    Case(batch=1, seqlen_q=77, seqlen_k=131, heads_q=4, heads_kv=2, head_dim=64, causal=True),
    Case(batch=2, seqlen_q=130, seqlen_k=65, heads_q=2, heads_kv=2, head_dim=96, window=(20, 3), softcap=20.0),
    Case(batch=1, seqlen_q=64, seqlen_k=200, heads_q=2, heads_kv=1, head_dim=128, layout="bhsd"),
    Case(batch=1, seqlen_q=190, seqlen_k=190, heads_q=2, heads_kv=2, head_dim=40, causal=True),
]

backend = sys.argv[1] if len(sys.argv) > 1 else "cuda_ampere"
failed = 0
for dq in ("atomic", "separate"):
    os.environ["PORTATTN_CUDA_AMPERE_DQ"] = dq
    for case in CASES:
        result = run_case(backend, case, device="cuda", dtype=torch.bfloat16)
        print(f"dq={dq} {result.id}: {result.status} {result.message[:200]}")
        failed += result.status != "pass"
print(f"{failed} failed")
sys.exit(1 if failed else 0)
