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
             dtype: torch.dtype = torch.bfloat16):  # fmt: skip
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    from triton.runtime.jit import mangle_type

    from portattn.backends.triton_hopper import configs, gluon_fwd, launch

    cfg = configs.pick_ws(head_dim, causal, 4096)
    x = torch.empty(2, 256, 4, head_dim, dtype=dtype)  # CPU memory: only shapes and strides are read

    def desc(rows: int):
        return TensorDescriptor(x, list(x.shape), list(x.stride()), [1, rows, 1, head_dim],
                                launch._nvmma_layout(rows, head_dim, dtype))  # fmt: skip

    descs = {"q_desc": desc(cfg.block_m), "k_desc": desc(cfg.block_n), "v_desc": desc(cfg.block_n),
             "o_desc": desc(cfg.block_m)}  # fmt: skip
    signature = {name: mangle_type(d) for name, d in descs.items()}
    signature.update(lse_ptr="*fp32", seqlen_q="i32", seqlen_k="i32", heads_q="i32", band_hi="i32",
                     qk_scale="fp32", n_m_tiles="i32", n_tiles="i32")  # fmt: skip
    constants = {"GROUP": 2, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "HEAD_D": head_dim,
                 "STAGES": cfg.stages, "HAS_HI": causal, "PINGPONG": pingpong, "CONSUMERS": consumers,
                 "CONSUMER_REGS": regs}  # fmt: skip
    signature.update(dict.fromkeys(constants, "constexpr"))
    source = GluonASTSource(gluon_fwd.attn_fwd_ws, signature, constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


@pytest.mark.parametrize(
    "head_dim,causal,pingpong,consumers",
    [(64, False, False, 2), (128, True, False, 2), (128, False, True, 2), (64, True, False, 3)],
)
def test_gluon_forward_compiles_for_sm90(head_dim, causal, pingpong, consumers):
    kernel = _compile(head_dim, causal, pingpong, consumers, regs=160 if consumers == 3 else 240)
    ptx = kernel.asm["ptx"]
    assert kernel.asm["cubin"], "no cubin: ptxas did not run"
    # the consumer warpgroups and a loader warp (padded to a group)
    assert kernel.metadata.num_warps == 4 * (consumers + 1)
    assert "wgmma.mma_async" in ptx, "the GEMMs must be asynchronous warpgroup MMAs"
    assert "setmaxnreg" in ptx, "the partitions must rebalance registers"
    assert "cp.async.bulk.tensor" in ptx, "tiles must move by TMA"
    assert "st.local" not in ptx, "register spills in the PTX"


def test_gluon_forward_reason_off_gpu():
    """Off an sm90 GPU the backend says why the Gluon kernel does not run, and the Triton one does."""
    from portattn.backends.triton_hopper import launch

    assert "sm90" in launch.gluon_forward_reason(None, None)
