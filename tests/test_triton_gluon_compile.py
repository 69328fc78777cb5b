"""The Gluon forward (``triton_hopper/gluon_fwd.py``) compiles for sm90 with the installed Triton.

Gluon has no interpreter, so CI cannot run the kernel; it can compile it on the CPU, down to PTX
and a cubin (Triton ships its own ptxas). That catches a Gluon API that moved between Triton
releases (3.6 on the GPU machines, the newest from PyPI in CI) before a GPU run does. The GPU tests
(``tests/test_gpu.py::test_gluon_forward*``) run it.
"""

from __future__ import annotations

import pytest
import torch

gluon = pytest.importorskip("triton.experimental.gluon", reason="this Triton has no Gluon")


def _compile(head_dim: int, causal: bool, pingpong: bool, consumers: int, regs: int,
             dtype: torch.dtype = torch.bfloat16, fp8: bool = False, cfg=None, schedule: bool = False):  # fmt: skip
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    from triton.runtime.jit import mangle_type

    from portattn.backends.triton_hopper import configs, gluon_fwd, launch

    cfg = cfg or configs.pick_ws(head_dim, causal, 4096, fp8)
    in_dtype = torch.float8_e4m3fn if fp8 else dtype
    x = torch.empty(2, 256, 4, head_dim, dtype=in_dtype)  # CPU memory: only shapes and strides are read
    xt = torch.empty(2, head_dim, 4, 256, dtype=in_dtype)  # FP8's V: (batch, dim, heads, keys)
    o = torch.empty(2, 256, 4, head_dim, dtype=dtype)

    def desc(t: torch.Tensor, rows: int, cols: int):
        return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, rows, 1, cols],
                                launch._nvmma_layout(rows, cols, t.dtype))  # fmt: skip

    v_desc = desc(xt, head_dim, cfg.block_n) if fp8 else desc(x, cfg.block_n, head_dim)
    descs = {"q_desc": desc(x, cfg.block_m, head_dim), "k_desc": desc(x, cfg.block_n, head_dim), "v_desc": v_desc,
             "o_desc": desc(o, cfg.block_m, head_dim)}  # fmt: skip
    signature = {name: mangle_type(d) for name, d in descs.items()}
    signature.update(lse_ptr="*fp32", qs_ptr="*fp32", ks_ptr="*fp32", vs_ptr="*fp32", sched_ptr="*i32",
                     seqlen_q="i32",
                     seqlen_k="i32", heads_q="i32", band_hi="i32", qk_scale="fp32", n_m_tiles="i32",
                     n_tiles="i32", q_blocks="i32", kv_blocks="i32")  # fmt: skip
    constants = {"GROUP": 2, "STAGES": cfg.stages, "HAS_HI": causal, "PINGPONG": pingpong, "CONSUMERS": consumers,
                 "CONSUMER_REGS": regs, "SCHEDULE": schedule, "OVERLAP": cfg.overlap,
                 "PERMUTE_V": cfg.permute_v}  # fmt: skip
    signature.update(dict.fromkeys(constants, "constexpr"))
    source = GluonASTSource(gluon_fwd.attn_fwd_ws, signature, constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


def _check_kernel(kernel, consumers: int) -> str:
    ptx = kernel.asm["ptx"]
    assert kernel.asm["cubin"], "no cubin: ptxas did not run"
    # the consumer warpgroups and a loader warp (padded to a group)
    assert kernel.metadata.num_warps == 4 * (consumers + 1)
    assert "wgmma.mma_async" in ptx, "the GEMMs must be asynchronous warpgroup MMAs"
    assert "setmaxnreg" in ptx, "the partitions must rebalance registers"
    assert "cp.async.bulk.tensor" in ptx, "tiles must move by TMA"
    assert "st.local" not in ptx, "register spills in the PTX"
    return ptx


@pytest.mark.parametrize(
    "head_dim,causal,pingpong,consumers",
    [(64, False, False, 2), (128, True, False, 2), (128, False, True, 2), (64, True, False, 3)],
)
def test_gluon_forward_compiles_for_sm90(head_dim, causal, pingpong, consumers):
    kernel = _compile(head_dim, causal, pingpong, consumers, regs=160 if consumers == 3 else 240)
    _check_kernel(kernel, consumers)


@pytest.mark.parametrize("consumers,block_n,regs", [(4, 64, 120), (3, 128, 160)])
def test_gluon_serial_forward_compiles_for_sm90(consumers, block_n, regs):
    """One key block at a time per consumer (``overlap=False``): the d=64 schedule that fits four consumer
    warpgroups in the register file; each GEMM is waited for before the next is issued."""
    from portattn.backends.triton_hopper import configs

    cfg = configs.WsConfig(64, block_n, 6 if block_n == 64 else 3, regs, persistent=True, consumers=consumers,
                           overlap=False)  # fmt: skip
    kernel = _compile(64, False, False, consumers, regs, cfg=cfg)
    _check_kernel(kernel, consumers)
    assert "wgmma.wait_group.sync.aligned 0" in kernel.asm["ptx"]


@pytest.mark.parametrize("head_dim,consumers", [(64, 2), (64, 3), (128, 2)])
def test_gluon_scheduled_forward_compiles_for_sm90(head_dim, consumers):
    """A host-made tile list (causal, persistent): each partition reads its tiles from global memory."""
    kernel = _compile(head_dim, True, consumers == 2, consumers, regs=160 if consumers == 3 else 240, schedule=True)
    ptx = _check_kernel(kernel, consumers)
    assert "ld.global" in ptx and ".b32" in ptx, "the tile list must be read from global memory"


@pytest.mark.parametrize("head_dim,causal", [(64, True), (128, False), (128, True), (256, False)])
def test_gluon_fp8_forward_compiles_for_sm90(head_dim, causal):
    """``precision="fp8"``: both GEMMs take e4m3 operands (P from registers), the output leaves in 16 bits."""
    kernel = _compile(head_dim, causal, False, 2, regs=240, fp8=True)
    ptx = _check_kernel(kernel, 2)
    assert "e4m3.e4m3" in ptx, "the GEMMs must run on e4m3 operands"
    assert "cvt.rn.satfinite.e4m3x2.f32" in ptx, "P must be cast to e4m3 in registers"


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_gluon_fp8_permuted_v_takes_p_without_shuffles(head_dim):
    """``permute_v``: with V^T's keys in P's register order, P goes from the accumulator of ``S`` to the
    A operand of ``P V`` without moving between threads (the plain kernel shuffles it: 30 or more
    ``shfl.sync.idx`` in the PTX; the row max and sum use ``bfly`` shuffles in both)."""
    from portattn.backends.triton_hopper import configs

    counts = {}
    for permute in (False, True):
        cfg = configs.pick_ws(head_dim, True, 4096, fp8=True)._replace(permute_v=permute)
        ptx = _check_kernel(_compile(head_dim, True, False, 2, regs=240, fp8=True, cfg=cfg), 2)
        counts[permute] = (ptx.count("shfl.sync.idx"), ptx.count("prmt"))
    assert counts[False][0] >= 30 and counts[True][0] <= 4, counts
    assert counts[True][1] < counts[False][1], counts


def test_gluon_forward_reason_off_gpu():
    """Off an sm90 GPU the backend says why the Gluon kernel does not run, and the Triton one does."""
    from portattn.backends.triton_hopper import launch

    assert "sm90" in launch.gluon_forward_reason(None, None)
