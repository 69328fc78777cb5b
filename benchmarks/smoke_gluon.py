"""One Gluon forward per (head dim, causal) against torch SDPA, each under its own time limit (a
deadlocked kernel shows as a timeout, not a hung device call). ``python3 benchmarks/smoke_gluon.py``"""

from __future__ import annotations

import torch

import portattn
from portattn.backends.triton_hopper import launch

for d in (64, 128):
    for causal in (False, True):
        q, k, v = (torch.randn(2, 1000, 4, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        calls = []
        real = launch._forward_gluon
        launch._forward_gluon = lambda *a, real=real, calls=calls: calls.append(1) or real(*a)
        out = portattn.attention(q, k, v, causal=causal, backend="triton_hopper")
        launch._forward_gluon = real
        torch.cuda.synchronize()
        ref = torch.nn.functional.scaled_dot_product_attention(
            *(t.transpose(1, 2) for t in (q, k, v)), is_causal=causal
        ).transpose(1, 2)
        print(f"d={d} causal={causal} gluon={bool(calls)} max err {(out - ref).abs().max().item():.3g}", flush=True)
