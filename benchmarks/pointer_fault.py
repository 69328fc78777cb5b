"""Localize the pointer-path fault seen on an H100 (head_dim 40 / head_dim_v 24, bf16).

Runs each kernel of ``triton_hopper`` alone on the pointer path, in that order, with a synchronize
after each, so the first line that reports an error names the faulting kernel. Meant to run under
``compute-sanitizer --tool memcheck``, each case in its own process (a fault poisons the context):

    for k in fwd dq dkdv; do compute-sanitizer --tool memcheck python3 benchmarks/pointer_fault.py $k; done

``dq`` runs the dQ kernel alone (it also makes ``delta``); ``dkdv`` the dK/dV kernel alone, on a
``delta`` that nothing wrote (its values do not matter to a memory check).
"""

from __future__ import annotations

import os
import sys

import torch

from portattn._call import normalize
from portattn.backends.triton_hopper import kernels, launch


def main(which: str, head_dim: int = 40, head_dim_v: int = 24) -> None:
    os.environ["PORTATTN_TRITON_TMA"] = "0"  # read at each launch
    torch.manual_seed(0)
    q = torch.randn(2, 33, 4, head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 33, 4, head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(2, 33, 4, head_dim_v, device="cuda", dtype=torch.bfloat16)
    call = normalize(q, k, v, causal=False, window=None, scale=None, softcap=None, sparsity=None, bias=None,
                     precision=None, return_lse=True, top_left=False, requires_grad=True)  # fmt: skip
    # the guard in launch would send head_dim_v != head_dim to TMA; bypass it to reach the pointer path
    launch._needs_tma = lambda call, cap: False
    out, lse = launch.forward(call, q, k, v)
    torch.cuda.synchronize()
    print("fwd ok", flush=True)
    if which == "fwd":
        return
    dout = torch.randn_like(out)
    original = {name: getattr(kernels, name) for name in ("attn_bwd_dkdv", "attn_bwd_dq")}
    skip = {"dkdv": ("attn_bwd_dq",), "dq": ("attn_bwd_dkdv",)}[which]

    class Skipped:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    for name in skip:
        setattr(kernels, name, Skipped())
    try:
        launch.backward(call, q, k, v, out, lse, dout, None)
        torch.cuda.synchronize()
    finally:
        for name, fn in original.items():
            setattr(kernels, name, fn)
    print(f"{which} ok", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "dq")
