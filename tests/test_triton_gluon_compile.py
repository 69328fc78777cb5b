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
             dtype: torch.dtype = torch.bfloat16, poly: int = 0):  # fmt: skip
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
                 "CONSUMER_REGS": regs, "POLY": poly}  # fmt: skip
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


def _run_ptx(asm: str, inputs: list[float], pack: int) -> list[float]:
    """Evaluate the few PTX instructions ``gluon_fwd._exp2_asm`` emits, in float32 with their rounding
    modes, on one pack of inputs (an emulator, so that CI checks the numbers without a GPU)."""
    import numpy as np

    def f32(bits: int) -> np.float32:
        return np.array([bits & 0xFFFFFFFF], dtype=np.uint32).view(np.float32)[0]

    def bits(x) -> int:
        return int(np.array([x], dtype=np.float32).view(np.uint32)[0])

    regs = {f"${pack + i}": bits(x) for i, x in enumerate(inputs)}

    def val(tok: str):
        tok = tok.strip()
        return f32(int(tok[2:], 16)) if tok.startswith("0f") else f32(regs[tok])

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        dst, *src = [t.strip() for t in rest.split(",")]
        if op == "ex2.approx.ftz.f32":
            out = bits(np.exp2(val(src[0])))
        elif op == "max.ftz.f32":
            out = bits(np.maximum(val(src[0]), val(src[1])))
        elif op == "add.rm.ftz.f32":  # exact in float64, then rounded toward -inf
            exact = float(val(src[0])) + float(val(src[1]))
            r = np.float32(exact)
            out = bits(np.nextafter(r, np.float32(-np.inf)) if float(r) > exact else r)
        elif op == "sub.ftz.f32":
            out = bits(val(src[0]) - val(src[1]))
        elif op == "fma.rn.ftz.f32":
            out = bits(np.float32(float(val(src[0])) * float(val(src[1])) + float(val(src[2]))))
        elif op == "shl.b32":
            out = (regs[src[0]] << int(src[1])) & 0xFFFFFFFF
        elif op == "add.s32":
            out = (regs[src[0]] + regs[src[1]]) & 0xFFFFFFFF
        else:
            raise AssertionError(f"the emulator does not know {op}")
        regs[dst] = out
    return [float(f32(regs[f"${i}"])) for i in range(pack)]


def test_polynomial_exp2_matches_exp2():
    """The softmax's polynomial exponentials (``POLY`` > 0): within 1e-4 relative of 2**x on [-127, 0],
    exactly 0 for masked (-inf) scores, and the MUFU share left untouched."""
    import numpy as np

    from portattn.backends.triton_hopper import gluon_fwd

    asm = gluon_fwd._exp2_asm(8, 3)
    rng = np.random.default_rng(0)
    xs = np.concatenate([-rng.exponential(4.0, 4000), rng.uniform(-127, 0, 4000), [0.0, -1.0, -0.5, -126.0, 1e-7]])
    xs = np.concatenate([xs, np.zeros((-len(xs)) % 8)]).astype(np.float32)
    worst = 0.0
    for i in range(0, len(xs), 8):
        got = _run_ptx(asm, list(xs[i : i + 8]), 8)
        want = np.exp2(xs[i : i + 8].astype(np.float64))
        assert got[:5] == list(np.exp2(xs[i : i + 5]).astype(np.float64)), "the ex2 elements changed"
        for g, w, x in zip(got[5:], want[5:], xs[i + 5 : i + 8]):
            if x > -126:  # below that, ex2.approx.ftz flushes to 0 and so may the polynomial
                worst = max(worst, abs(g / w - 1))
    assert worst < 1e-4, worst
    masked = _run_ptx(asm, [float("-inf")] * 8, 8)
    assert masked == [0.0] * 8, masked
