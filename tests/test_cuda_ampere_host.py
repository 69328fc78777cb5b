"""``cuda_ampere`` on a CPU-only machine: the kernel sources compile with ``nvcc`` for sm_80 and sm_90
(warnings are errors), and the host-side plan (template instance, grid, shared memory, argument list
against the kernel's own parameter list, stride handling) is right. The GPU runs it in test_gpu.py."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import torch

from portattn._call import normalize
from portattn.backends.cuda_ampere import plan
from tests.cuda_host import check_arg_types, kernel_params

NVCC = shutil.which("nvcc")


def _call(q, k, v, **kw):
    return normalize(q, k, v, causal=kw.get("causal", False), window=kw.get("window"), scale=None,
                     softcap=kw.get("softcap"), sparsity=None, bias=None, precision=None, return_lse=True,
                     top_left=False)  # fmt: skip


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH (CI machines have it)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_sources_compile_with_nvcc(tmp_path, arch):
    """Every template instance the plan can ask for, from the exact text NVRTC gets."""
    names = plan.all_instances()
    unit = tmp_path / "unit.cu"
    refs = ",\n".join(f"  reinterpret_cast<const void*>(&{n})" for n in names)  # taking the address instantiates
    unit.write_text(plan.source() + f"\nconst void* portattn_instances[] = {{\n{refs}\n}};\n")
    options = [o.replace("--use_fast_math", "-use_fast_math") for o in plan.NVRTC_OPTIONS]
    cmd = [NVCC, *options, f"-arch={arch}", "-Werror", "all-warnings", "-c", str(unit), "-o", str(tmp_path / "u.o")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert len(names) == 2 * 2 * 8 * 4 + 2 * 2  # dtypes, tile widths, flag sets, kernels; delta kernels


def _kernel_params(kernel: str) -> list[str]:
    return kernel_params(plan.CSRC, plan.SOURCES, kernel)


def test_argument_lists_match_the_kernel_parameters():
    """CuPy does not check arguments: each must have the C type of its parameter, in order."""
    q, k, v = torch.randn(2, 33, 4, 40), torch.randn(2, 50, 2, 40), torch.randn(2, 50, 2, 24)
    call = _call(q, k, v, causal=True, softcap=30.0)
    q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    out, lse = torch.empty(2, 33, 4, 24, dtype=torch.bfloat16), torch.empty(2, 4, 33)
    launch = plan.fwd_launch(call, q, k, v, out, lse)
    check_arg_types(launch.args, _kernel_params("flash_fwd"))
    assert len(launch.args) == 28
    assert launch.name == "portattn::flash_fwd<__nv_bfloat16, 64, 128, 128, false, true, true>"  # d<=64: 128x128
    assert launch.grid == (1, 8) and launch.threads == 128
    assert launch.smem_bytes == (128 + 4 * 128) * 64 * 2 + 256  # and 256 to align the tiles
    band_hi = launch.args[24]
    assert band_hi == 50 - 33  # bottom-right causal: row i sees keys up to i + (seqlen_k - seqlen_q)

    dkdv, dq = plan.bwd_launches(call, q, k, v, out, lse, lse, q, k, v)
    check_arg_types(dkdv.args, _kernel_params("flash_bwd_dkdv"))
    check_arg_types(dq.args, _kernel_params("flash_bwd_dq"))
    assert dkdv.grid == (1, 2 * 2) and dq.grid == (1, 2 * 4)  # 64 keys of each K/V head; 64 queries of each head
    assert dkdv.args[32] == 2 and dq.args[24] == 4  # the head count each grid runs over
    assert dkdv.name == "portattn::flash_bwd_dkdv<__nv_bfloat16, 64, 64, 4, false, false, true, true>"
    assert dkdv.args[8] == 0  # no float32 dQ: flash_bwd_dq writes dQ

    dq32 = torch.zeros(q.shape)
    (fused,) = plan.bwd_launches(call, q, k, v, out, lse, lse, dq32, k, v)  # float32 dQ: the one-kernel backward
    check_arg_types(fused.args, _kernel_params("flash_bwd_dkdv"))
    assert fused.name == "portattn::flash_bwd_dkdv<__nv_bfloat16, 64, 64, 8, true, false, true, true>"
    assert fused.grid == (1, 2 * 2) and fused.threads == 256  # 128 keys of each K/V head
    assert fused.args[8] == dq32.data_ptr() and fused.args[27:30] == dq32.stride()[:3]
    # K, V (128 keys), two Q and two dO buffers (64 queries), dS^T, then lse and delta twice
    assert fused.smem_bytes == (2 * 128 + 4 * 64 + 128 * 64 // 64) * 64 * 2 + 4 * 64 * 4 + 256

    delta = plan.delta_launch(call, out, out, lse, lse, lse, dq32)
    check_arg_types(delta.args, _kernel_params("flash_bwd_delta"))
    assert delta.name == "portattn::flash_bwd_delta<__nv_bfloat16, 64>" and delta.grid == (1, 2 * 4)
    assert delta.args[5] == dq32.data_ptr() and plan.delta_launch(call, out, out, lse, lse, lse, None).args[5] == 0


def test_deterministic_algorithms_select_the_two_kernel_backward(monkeypatch):
    assert plan.dq_by_atomics()
    monkeypatch.setenv(plan.DQ_ENV, "separate")
    assert not plan.dq_by_atomics()
    monkeypatch.delenv(plan.DQ_ENV)
    torch.use_deterministic_algorithms(True)
    try:
        assert not plan.dq_by_atomics()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize(("dim", "width"), [(8, 64), (64, 64), (72, 128), (128, 128)])
def test_head_dims_are_zero_filled_up_to_a_kernel_width(dim, width):
    assert plan.fwd_config(dim).head_dim == width


def test_rows_aligned_copies_only_what_cp_async_cannot_read():
    x = torch.randn(2, 10, 3, 64, dtype=torch.float16)
    assert plan.rows_aligned(x) is x
    assert plan.rows_aligned(x.transpose(1, 2)) is not None  # (b, h, s, d) view: rows still 16-byte aligned
    odd = torch.randn(2, 10, 3, 65, dtype=torch.float16)[..., :64]  # rows 130 bytes apart
    fixed = plan.rows_aligned(odd)
    assert fixed is not odd and fixed.is_contiguous() and torch.equal(fixed, odd)
    assert plan.rows_aligned(x.transpose(2, 3)).stride(-1) == 1  # last dim not contiguous: copied


def test_backend_is_unavailable_without_a_gpu_and_says_why():
    from portattn.backends.cuda_ampere import CudaAmpereBackend

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert CudaAmpereBackend().available() == "no CUDA device"


def test_source_includes_only_headers_nvrtc_has():
    """NVRTC has no C or C++ standard headers (a <stdint.h> broke the first GPU run): only CUDA's own."""
    includes = re.findall(r"#include\s*[<\"]([^>\"]+)", plan.source())
    assert set(includes) <= {"cuda_fp16.h", "cuda_bf16.h"}, includes


def test_backend_backward_hands_the_delta_kernel_to_the_launcher(monkeypatch):
    """The kernels read lse in base 2, which only the delta kernel writes: the backend must pass it (a
    dropped keyword once fed them the natural-log lse)."""
    import sys
    import types

    from portattn.backends.cuda_ampere import CudaAmpereBackend

    monkeypatch.setitem(sys.modules, "cupy", sys.modules.get("cupy") or types.ModuleType("cupy"))
    from portattn.backends import cupy_launch

    seen = {}
    monkeypatch.setattr(cupy_launch, "backward", lambda *args, **kw: seen.update(kw))
    CudaAmpereBackend().backward(None, None, None, None, None, None, None)
    assert seen["delta_launch"] is plan.delta_launch and seen["dq_float32"] == plan.dq_by_atomics()
