"""``cuda_volta`` on a CPU-only machine: the kernel compiles with ``nvcc`` (warnings are errors) and
its PTX holds Volta's instructions only; the host-side plan (template instance, shared memory,
argument list against the kernel's own parameter list) and the backend's reasons are right. The GPU
runs it in test_gpu.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from portattn._call import normalize
from portattn.backends.cuda_volta import CudaVoltaBackend, plan, wmma_order
from tests.cuda_host import check_arg_types, kernel_params

NVCC = shutil.which("nvcc")
# instruction families newer than sm70: cp.async (sm80), ldmatrix (sm75), the m16n8k* MMAs and bf16
# (sm80), movmatrix/stmatrix, mbarrier/TMA/wgmma/setmaxnreg (sm90), redux (sm80)
NEWER_THAN_SM70 = ("cp.async", "ldmatrix", "stmatrix", "movmatrix", ".m16n8k", "bf16", "mbarrier", "wgmma",
                   "setmaxnreg", "cp.reduce", "redux", "elect")  # fmt: skip


def _call(q, k, v, **kw):
    return normalize(q, k, v, causal=kw.get("causal", False), window=kw.get("window"), scale=None, softcap=None,
                     sparsity=None, bias=None, precision=None, return_lse=True, top_left=False)  # fmt: skip


def _unit(tmp_path):
    """Every instance: the shared-memory softmax from the plain source, the register softmax from the
    source with mma.m16n8k16's order (an order the host's check accepts), and the probe."""
    names = [*plan.all_instances(), wmma_order.PROBE_KERNEL]
    plain = ",\n".join(f"  reinterpret_cast<const void*>(&{n})" for n in names)
    register = ",\n".join(f"  reinterpret_cast<const void*>(&{n})" for n in plan.all_instances(True))
    facts = wmma_order.register_softmax(wmma_order.mma_order())
    unit = tmp_path / "unit.cu"
    unit.write_text(plan.source(facts) + wmma_order.PROBE
                    + f"\nconst void* portattn_instances[] = {{\n{plain},\n{register}\n}};\n")  # fmt: skip
    return unit


def _archs() -> set[str]:
    out = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True, timeout=60).stdout
    return set(out.split())


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH (CI machines have it)")
@pytest.mark.parametrize("arch", ["sm_70", "sm_75", "sm_80", "sm_90"])
def test_sources_compile_with_nvcc(tmp_path, arch):
    if f"compute_{arch[3:]}" not in _archs():  # CUDA 13 dropped sm_70; the PTX test below covers it
        pytest.skip(f"this nvcc cannot target {arch} (nvcc --list-gpu-arch)")
    options = [o.replace("--use_fast_math", "-use_fast_math") for o in plan.NVRTC_OPTIONS]
    cmd = [NVCC, *options, f"-arch={arch}", "-Werror", "all-warnings", "-c", str(_unit(tmp_path)), "-o", "/dev/null"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH (CI machines have it)")
def test_ptx_uses_volta_instructions_only(tmp_path):
    """The PTX for the oldest target this nvcc has (compute_70, or compute_75 from CUDA 13 on) holds
    no instruction newer than sm70, and its MMAs are WMMA m16n16k16 on fp16 with fp32 accumulation."""
    arch = min((a for a in _archs() if a.startswith("compute_")), key=lambda a: int(a.split("_")[1]))
    assert int(arch.split("_")[1]) <= 75, f"the oldest target of this nvcc is {arch}"
    ptx_path = tmp_path / "unit.ptx"
    options = [o.replace("--use_fast_math", "-use_fast_math") for o in plan.NVRTC_OPTIONS]
    cmd = [NVCC, *options, f"-arch={arch}", "-ptx", str(_unit(tmp_path)), "-o", str(ptx_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    ptx = ptx_path.read_text()
    code = "\n".join(line.split("//")[0] for line in ptx.splitlines())  # comments may name anything
    for family in NEWER_THAN_SM70:
        assert family not in code, f"{family} is newer than sm70"
    mmas = set(re.findall(r"\bwmma\.mma\.sync\.aligned\.[\w.]+", code))
    assert mmas == {
        "wmma.mma.sync.aligned.row.col.m16n16k16.f32.f32",
        "wmma.mma.sync.aligned.row.row.m16n16k16.f32.f32",
    }, mmas
    loads = set(re.findall(r"\bwmma\.load\.[ab]\.sync\.aligned\.[\w.]+", code))
    assert loads and all(x.endswith("m16n16k16.shared.f16") for x in loads), loads
    # every fragment is in shared memory and says so: a generic address would cost generic loads
    assert not re.search(r"\bwmma\.(load|store)\.[abcd]\.sync\.aligned\.\w+\.m16n16k16\.f", code)
    entries = len(plan.all_instances()) + len(plan.all_instances(True)) + 1  # and the probe
    assert len(re.findall(r"^\.(?:visible )?\.entry", ptx, re.M)) == entries


def _cuobjdump() -> str | None:
    try:
        import triton  # its wheel carries cuobjdump
    except ImportError:
        return shutil.which("cuobjdump")
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.exists() else shutil.which("cuobjdump")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH (CI machines have it)")
@pytest.mark.skipif(_cuobjdump() is None, reason="no cuobjdump (neither on PATH nor in the triton wheel)")
def test_sm90_code_reads_fragments_with_shared_loads(tmp_path):
    """What ptxas makes of the `.shared` WMMA loads for the H100 stand-in: ldmatrix (LDSM), no
    generic loads or stores (LD/ST), which a generic fragment address compiles to (288 LD and 128
    movmatrix in the d=128 forward, where 72 LDSM do the same work)."""
    cubin = tmp_path / "unit.cubin"
    options = [o.replace("--use_fast_math", "-use_fast_math") for o in plan.NVRTC_OPTIONS]
    cmd = [NVCC, *options, "-arch=sm_90", "-cubin", str(_unit(tmp_path)), "-o", str(cubin)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    sass = subprocess.run([_cuobjdump(), "-sass", str(cubin)], capture_output=True, text=True, timeout=120)
    assert sass.returncode == 0, sass.stderr[-2000:]
    ops = re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)", sass.stdout, re.M)
    assert sum(op.startswith("HMMA") for op in ops) > 0 and sum(op.startswith("LDSM") for op in ops) > 0
    generic = sorted({op for op in ops if op.split(".")[0] in ("LD", "ST")})
    assert not generic, generic


def _kernel_params(kernel: str) -> list[str]:
    return kernel_params(plan.CSRC, plan.SOURCES, kernel)


def test_argument_lists_match_the_kernel_parameters():
    """CuPy does not check arguments: each must have the C type of its parameter, in order."""
    q, k, v = torch.randn(2, 33, 4, 40, dtype=torch.float16), *torch.randn(2, 2, 50, 2, 40, dtype=torch.float16)
    out, lse = torch.empty_like(q), torch.empty(2, 4, 33)
    call = _call(q, k, v, causal=True)
    launch = plan.fwd_launch(call, q, k, v, out, lse)
    check_arg_types(launch.args, _kernel_params("flash_fwd_sm70"))
    assert launch.name == "portattn_sm70::flash_fwd_sm70<64, 4, true, false, false, true>"
    assert launch.grid == (1, 8) and launch.threads == 128
    assert launch.args[-4:-1] == (40, 0, 17)  # dim, no lower band, causal offset 50 - 33
    dkdv, dq = plan.bwd_launches(call, q, k, v, out, lse, lse, q, k, v)
    check_arg_types(dkdv.args, _kernel_params("flash_bwd_dkdv_sm70"))
    check_arg_types(dq.args, _kernel_params("flash_bwd_dq_sm70"))
    assert dkdv.grid == (1, 4) and dq.grid == (1, 8)  # 64 keys per K/V head; 64 queries per query head
    assert dkdv.args[-7] == 2 and dq.args[-7] == 4  # the kernel's own head count


def test_shared_memory_fits_a_volta_block():
    for d in (64, 128):
        sizes = [plan.smem_bytes(d), plan.smem_bytes(d, register_softmax=True), plan.bwd_smem_bytes(d, "dkdv"),
                 plan.bwd_smem_bytes(d, "dq")]  # fmt: skip
        assert max(sizes) <= plan.MAX_SMEM, sizes


def test_reasons():
    """fp16 only, head dims multiple of 8 up to 128, head_dim_v == head_dim."""
    backend = CudaVoltaBackend()
    fp16 = torch.float16
    q, k, v = (torch.randn(1, 8, 2, 64, dtype=fp16) for _ in range(3))
    assert backend.extra_reasons(_call(q, k, v)) == []
    caps = backend.capabilities
    assert caps.dtypes == frozenset({fp16}) and caps.max_head_dim == 128
    assert {"backward", "kv_offload"} <= caps.features and "head_dim_v" not in caps.features
    odd = (torch.randn(1, 8, 2, 36, dtype=fp16) for _ in range(3))
    assert "multiple of 8" in backend.extra_reasons(_call(*odd))[0]


def test_register_softmax_facts_of_orders():
    """mma.m16n8k16's order: rows g and g + 8 per lane (slots 0, 1, 4, 5 and 2, 3, 6, 7), shared by
    lane bits 0 and 1, P's A pairs in the lane's own slots; the same with A one lane-half over
    (lane ^ 16); no facts for a scrambled order or one whose A pairs would come from two lanes."""
    mma = wmma_order.mma_order()
    facts = wmma_order.register_softmax(mma)
    assert facts == wmma_order.RegisterSoftmax(
        group_of=(0, 0, 1, 1, 0, 0, 1, 1), group_slot=(0, 2), row_masks=(1, 2),
        a_slot=(0, 1, 2, 3, 4, 5, 6, 7) * 2, a_xor=(0,) * 16)  # fmt: skip
    shifted = wmma_order.WmmaOrder(mma.c, tuple(mma.a[lane ^ 16] for lane in range(32)))
    assert wmma_order.register_softmax(shifted).a_xor == (16,) * 16
    rng = np.random.default_rng(0)
    scrambled = wmma_order.WmmaOrder.from_flat(rng.permutation(256), np.concatenate([rng.permutation(256)] * 2))
    assert wmma_order.register_softmax(scrambled) is None
    split = [list(lane) for lane in mma.a]
    for lane in range(32):  # element 1 of each lane from lane ^ 1: a pair across two lanes
        split[lane][1] = mma.a[lane ^ 1][1]
    assert wmma_order.register_softmax(wmma_order.WmmaOrder(mma.c, tuple(map(tuple, split)))) is None
    unset = wmma_order.WmmaOrder(mma.c, tuple(lane[:8] + (-1,) * 8 for lane in mma.a))  # A's upper half not written
    assert wmma_order.register_softmax(unset) is None
    assert "REGISTER_SOFTMAX = true" in wmma_order.header(facts) and wmma_order.header(None) == ""
