"""``triton_hopper``'s own checks, on CPU (no triton import): what it refuses on which GPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import portattn.backends.triton_hopper as th
from portattn._call import normalize


def cuda_call(head_dim: int, head_dim_v: int, dtype=torch.bfloat16):
    q = torch.empty(1, 8, 2, head_dim, dtype=dtype)
    v = torch.empty(1, 8, 2, head_dim_v, dtype=dtype)
    call = normalize(q, q, v, causal=False, window=None, scale=None, softcap=None, sparsity=None, bias=None,
                     precision=None, return_lse=False, top_left=False)  # fmt: skip
    cuda = torch.device("cuda", 0)
    return dataclasses.replace(call, device=cuda, kv_device=cuda)


@pytest.mark.parametrize(
    "capability,head_dim,head_dim_v,refused",
    [
        ((9, 0), 64, 64, False),
        ((9, 0), 40, 24, False),  # TMA path: 80- and 48-byte rows
        ((9, 0), 20, 24, True),  # 40-byte rows: no TMA, and the pointer path is not trusted for this
        ((8, 0), 40, 24, True),  # sm80 has only the pointer path
        ((8, 0), 64, 64, False),
        ((7, 0), 64, 64, True),  # below sm80
    ],
)
def test_head_dim_v_rule(monkeypatch, capability, head_dim, head_dim_v, refused):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(th, "cuda_capability", lambda device: capability)
    monkeypatch.setattr("portattn._backend.cuda_capability", lambda device: capability)
    reasons = th.TritonHopperBackend().reasons(cuda_call(head_dim, head_dim_v))
    assert bool(reasons) == refused, reasons
    if refused and capability >= (8, 0):
        assert "head_dim_v != head_dim needs the TMA path" in reasons[0]


@pytest.mark.parametrize("capability,priority", [((8, 0), 240), ((8, 9), 240), ((9, 0), 300), ((10, 0), 300)])
def test_priority_ranks_below_cuda_ampere_on_sm8x(monkeypatch, capability, priority):
    """On sm80-sm89 only the pointer path runs: cuda_ampere (250), made for those GPUs, is chosen first."""
    from portattn.backends.cuda_ampere import CudaAmpereBackend

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(th, "cuda_capability", lambda device: capability)
    assert th.TritonHopperBackend().priority_for(cuda_call(64, 64)) == priority
    assert (priority < CudaAmpereBackend().priority_for(cuda_call(64, 64))) == (capability < (9, 0))
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter serves tests on any device: no demotion
    assert th.TritonHopperBackend().priority_for(cuda_call(64, 64)) == 300
