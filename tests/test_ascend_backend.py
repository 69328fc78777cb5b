"""The ``ascend`` backend without an NPU: availability reasons, import hygiene, and its glue (path
choice, forward, backward) run through the conformance kit with the emulated fused op on the CPU."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

import portattn
from portattn.backends.ascend import AscendBackend
from portattn.testing import default_cases, run_case

fused = pytest.importorskip("portattn.backends.ascend.fused")
emulation = pytest.importorskip("portattn.backends.ascend.emulation")


def test_reason_when_torch_npu_is_not_installed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch_npu" else real(name, *a))
    assert "torch-npu is not installed" in AscendBackend().available()


def test_broken_torch_npu_is_a_reason_not_a_crash(tmp_path):
    (tmp_path / "torch_npu.py").write_text("raise ImportError('libhccl.so: cannot open shared object file')\n")
    code = (
        "import portattn, json\n"
        "rec = {r.name: r for r in portattn.list_backends()}['ascend']\n"
        "print(json.dumps([rec.available, rec.reason]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert '"torch_npu failed to import (ImportError: libhccl.so' in proc.stdout and "false" in proc.stdout
    info = subprocess.run([sys.executable, "-m", "portattn", "info"], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert info.returncode == 0 and "libhccl.so" in info.stdout


class AscendOnCPU(AscendBackend):
    """The real backend's forward/backward, on CPU tensors, with the documented op emulated."""

    name = "ascend_on_cpu"
    capabilities = dataclasses.replace(AscendBackend.capabilities, devices=None)

    def available(self):
        return None

    def fused_op(self):
        return emulation.npu_fusion_attention_emulated


CASES = default_cases("quick")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.name for c in CASES])
def test_backend_glue_passes_the_battery(index, dtype):
    result = run_case(AscendOnCPU(), CASES[index], dtype=dtype, seed=index)
    result.raise_for_failure()
    assert result.status == "pass", result.message


def test_both_paths_are_used():
    from portattn._call import normalize

    def call(**kw):
        q = torch.randn(1, 8, 2, 16)
        options = {"causal": False, "window": None, "scale": None, "softcap": None, "sparsity": None}
        options.update(kw)
        return normalize(q, q, q, bias=None, precision=None, return_lse=True, top_left=False, **options)

    assert not isinstance(fused.plan(call(causal=True)), str)  # the fused op expresses it
    assert isinstance(fused.plan(call(softcap=5.0)), str)  # the tiling path takes it


def test_dispatch_never_picks_ascend_without_an_npu():
    q = torch.randn(1, 4, 2, 8)
    rows = {r.name: r for r in portattn.explain(q, q, q, quiet=True).rows}
    assert not rows["ascend"].chosen and rows["ascend"].reasons
