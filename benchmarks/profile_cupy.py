"""One forward and one backward of a backend and of torch SDPA's flash (FA2) at one shape, for
``ncu --kernel-name regex:flash`` to compare the kernels side by side (run each twice: the first call
compiles). Usage: ``ncu ... python3 benchmarks/profile_cupy.py [backend] [seqlen] [head_dim] [causal]``."""

from __future__ import annotations

import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import portattn

backend = sys.argv[1] if len(sys.argv) > 1 else "cuda_ampere"
seqlen = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
head_dim = int(sys.argv[3]) if len(sys.argv) > 3 else 128
causal = len(sys.argv) > 4 and sys.argv[4] == "causal"
batch, heads = 16384 // seqlen, 2048 // head_dim
q, k, v = (torch.randn(batch, seqlen, heads, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
           for _ in range(3))  # fmt: skip
for _ in range(2):
    out = portattn.attention(q, k, v, causal=causal, backend=backend)
    out.backward(torch.ones_like(out))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        ref = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
        ref.backward(torch.ones_like(ref))
torch.cuda.synchronize()
print("done")
