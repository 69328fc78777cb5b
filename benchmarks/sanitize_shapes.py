"""Small shapes for ``compute-sanitizer --tool memcheck``: odd lengths, GQA, masks, every tile path of the
Triton forward (the Gluon one off), the Gluon forward (persistent and not), FP8, block-sparse patterns
forward and backward. Each case runs twice: the second call takes the direct launch of the kept kernels.
``PORTATTN_SANITIZE_ONLY=gluon`` runs the Gluon forward's cases alone (a quick check after a change to it).

Exits non-zero if any output differs from the reference (the sanitizer reports bad accesses itself).
"""

from __future__ import annotations

import os
import sys

import torch

import portattn
from portattn.testing import Case, make_inputs, run_case

CASES = [
    Case(batch=1, seqlen_q=77, seqlen_k=131, heads_q=4, heads_kv=2, head_dim=64, causal=True),
    Case(batch=2, seqlen_q=130, seqlen_k=65, heads_q=2, heads_kv=2, head_dim=96, window=(20, 3)),
    Case(batch=1, seqlen_q=64, seqlen_k=200, heads_q=2, heads_kv=1, head_dim=128, softcap=20.0, layout="bhsd"),
    Case(batch=1, seqlen_q=33, seqlen_k=33, heads_q=2, heads_kv=2, head_dim=256, causal=True),
]
GLUON_CASES = [  # head dims 64/128 without window or softcap: the Gluon forward's share
    Case(batch=1, seqlen_q=77, seqlen_k=131, heads_q=4, heads_kv=2, head_dim=64, causal=True),
    Case(batch=2, seqlen_q=300, seqlen_k=129, heads_q=2, heads_kv=2, head_dim=128),  # persistent
    Case(batch=1, seqlen_q=260, seqlen_k=70, heads_q=2, heads_kv=1, head_dim=128, causal=True, layout="bhsd"),
    # 288 tiles over at most 132 programs, read from the scheduled walk's tile list (d=64 causal at 1k)
    Case(batch=2, seqlen_q=1000, seqlen_k=1000, heads_q=18, heads_kv=6, head_dim=64, causal=True),
    # d=64 non-causal, seqlen_k odd and shorter than seqlen_q: each head's last 128-row tile holds 104 rows
    Case(batch=2, seqlen_q=1000, seqlen_k=777, heads_q=4, heads_kv=2, head_dim=64),
]
ONLY_GLUON = os.environ.get("PORTATTN_SANITIZE_ONLY") == "gluon"
if ONLY_GLUON:
    CASES = []

failed = 0
os.environ["PORTATTN_TRITON_GLUON"] = "0"
for path in ("host", "1", "0"):
    os.environ["PORTATTN_TRITON_TMA"] = path
    for case in CASES:
        for seed in (0, 1):  # the second call launches the kept kernels directly (direct.py)
            result = run_case("triton_hopper", case, device="cuda", dtype=torch.bfloat16, seed=seed)
            print(f"tma={path} {result.id} seed={seed}: {result.status} {result.message[:200]}")
            failed += result.status != "pass"
os.environ.pop("PORTATTN_TRITON_TMA")
os.environ.pop("PORTATTN_TRITON_GLUON")
for case in GLUON_CASES:
    for seed in (0, 1):
        result = run_case("triton_hopper", case, device="cuda", dtype=torch.bfloat16, seed=seed)
        print(f"gluon {result.id} seed={seed}: {result.status} {result.message[:200]}")
        failed += result.status != "pass"
for case in CASES:  # precision="fp8": the prepass and the e4m3 forward (tolerance: FP8's error)
    q, k, v = make_inputs(case, "cuda", torch.bfloat16, seed=1)
    kw = {"causal": case.causal, "window": case.window, "softcap": case.softcap}
    out = portattn.attention(q, k, v, precision="fp8", **kw)
    exact = portattn.attention(q, k, v, backend="reference", **kw)
    err = (out.double() - exact.double()).abs().max().item()
    ok = err < 0.3 and not out.isnan().any()
    print(f"fp8 {case.name}: max error {err:.3g} {'pass' if ok else 'FAIL'}")
    failed += not ok
from portattn import sparse  # noqa: E402
from portattn.backends.reference.naive import attention_reference  # noqa: E402

SPARSE_CASES = [  # (pattern, causal, seqlen_q, seqlen_k): partial tiles, tails, GQA
    (lambda: sparse.bigbird(40, 32, 1, seed=2, block=32), False, 150, 97),
    (lambda: sparse.global_tokens([3, 70]) | sparse.random_blocks(1, seed=1), True, 300, 333),
]
if ONLY_GLUON:
    SPARSE_CASES = []
for make, causal, sq, sk in SPARSE_CASES:
    pattern = make()
    gen = torch.Generator(device="cuda").manual_seed(sq)
    q = torch.randn(1, sq, 4, 64, device="cuda", dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(1, sk, 2, 64, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    dout = torch.randn_like(q)
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    call = portattn.explain(q, k, v, sparsity=pattern, causal=causal, quiet=True).call
    ref = attention_reference(call, *exact)[0]
    want = torch.autograd.grad(ref, exact, dout.double())
    for seed in (0, 1):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = portattn.attention(*leaves, sparsity=pattern, causal=causal, backend="triton_hopper")
        got = torch.autograd.grad(out, leaves, dout)
        err = max((a.double() - b).abs().max().item() for a, b in zip((out, *got), (ref, *want), strict=True))
        ok = err < 0.1
        print(
            f"sparse {pattern!r} causal={causal} {sq}x{sk} call {seed}: max error {err:.3g} {'pass' if ok else 'FAIL'}"
        )
        failed += not ok
sys.exit(1 if failed else 0)
