"""GPU truth: the kernels on a real device at real sizes (run by scripts/gpu.sh on a lent GPU).

Fresh random inputs, poisoned outputs, gradients; every backend that is available on the device
(``PORTATTN_GPU_TEST_BACKENDS=a,b`` narrows the battery to those, for a quick run after one kernel
changes).
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

import portattn
from portattn.testing import Case, default_cases, run_case

pytestmark = pytest.mark.gpu

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _backends():
    only = [n for n in os.environ.get("PORTATTN_GPU_TEST_BACKENDS", "").split(",") if n]
    names = [r.name for r in portattn.list_backends() if r.available and r.name not in ("reference",)]
    return [n for n in names if n in only] if only else names


# every case in bf16; fp16 and fp32 on a third of them each (compiles dominate the time)
BATTERY = [(c, torch.bfloat16) for c in default_cases("full")]
BATTERY += [(c, DTYPES[1 + i % 2]) for i, c in enumerate(default_cases("full")) if i % 3 == 0]


@pytest.mark.parametrize("case,dtype", BATTERY, ids=[f"{c.name}-{str(d)[6:]}" for c, d in BATTERY])
def test_battery_on_gpu(case, dtype):
    for name in _backends():
        result = run_case(name, case, device="cuda", dtype=dtype)
        result.raise_for_failure()


REAL = [
    Case(batch=2, seqlen_q=1024, seqlen_k=1024, heads_q=16, heads_kv=16, head_dim=128),
    Case(batch=2, seqlen_q=1024, seqlen_k=1024, heads_q=16, heads_kv=16, head_dim=128, causal=True),
    Case(batch=1, seqlen_q=2048, seqlen_k=2048, heads_q=32, heads_kv=8, head_dim=64, causal=True),
    Case(batch=1, seqlen_q=1000, seqlen_k=3001, heads_q=8, heads_kv=2, head_dim=128, causal=True),
    Case(batch=1, seqlen_q=3001, seqlen_k=1000, heads_q=8, heads_kv=8, head_dim=96, causal=True),
    Case(batch=1, seqlen_q=2048, seqlen_k=2048, heads_q=8, heads_kv=8, head_dim=256),
    Case(batch=1, seqlen_q=1536, seqlen_k=1536, heads_q=8, heads_kv=8, head_dim=192, causal=True),
    Case(batch=1, seqlen_q=2048, seqlen_k=2048, heads_q=8, heads_kv=4, head_dim=32, window=(256, 0)),
    Case(batch=1, seqlen_q=2049, seqlen_k=2047, heads_q=8, heads_kv=8, head_dim=128, window=(100, 50), softcap=30.0),
    Case(batch=2, seqlen_q=777, seqlen_k=1234, heads_q=4, heads_kv=4, head_dim=64, layout="bhsd", causal=True),
    Case(batch=2, seqlen_q=513, seqlen_k=513, heads_q=4, heads_kv=4, head_dim=128, layout="padded"),
]


REAL_MATRIX = [(c, torch.bfloat16) for c in REAL] + [(c, torch.float16) for c in REAL[::4]]


@pytest.mark.parametrize("case,dtype", REAL_MATRIX, ids=[f"{c.name}-{str(d)[6:]}" for c, d in REAL_MATRIX])
def test_real_sizes(case, dtype):
    for name in ("triton_hopper",):
        result = run_case(name, case, device="cuda", dtype=dtype)
        result.raise_for_failure()
        assert result.status == "pass", result.message


@pytest.mark.parametrize("case,dtype", REAL_MATRIX, ids=[f"{c.name}-{str(d)[6:]}" for c, d in REAL_MATRIX])
def test_real_sizes_cuda_ampere(case, dtype):
    """Forward and gradients (dK/dV and dQ kernels) against the float64 reference."""
    result = run_case("cuda_ampere", case, device="cuda", dtype=dtype)
    result.raise_for_failure()
    widest = max(case.head_dim, case.head_dim_v or case.head_dim)
    assert result.status == ("unsupported" if widest > 128 else "pass"), result.message


CACHE_PROBE = """
import json, torch, portattn
from portattn.backends import cupy_launch
torch.manual_seed(0)
q = torch.randn(1, 300, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
out = portattn.attention(q, q, q, causal=True, backend="cuda_ampere")
out.float().square().sum().backward()
print(json.dumps([dict(cupy_launch.events), cupy_launch.fallback_reason, out.float().sum().item(),
                  q.grad.float().square().sum().item()]))
"""


def test_cuda_ampere_kernel_cache_serves_a_second_process(tmp_path, monkeypatch):
    """The first process compiles each kernel (forward, delta, backward) and keeps it on disk; the second
    loads all of them and compiles none, with the same results; the records give the compile times."""
    import subprocess
    import sys

    from portattn import _kernel_cache

    if "cuda_ampere" not in _backends():
        pytest.skip("cuda_ampere is not available on this machine (or not selected)")
    monkeypatch.setenv(_kernel_cache.CACHE_ENV, str(tmp_path))
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", CACHE_PROBE], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    (first, first_reason, *first_values), (second, second_reason, *second_values) = runs
    assert first.get("compiled", 0) >= 3 and not first.get("loaded") and not first.get("cupy"), (first, first_reason)
    assert second == {"loaded": first["compiled"]}, (second, second_reason)
    assert first_values == second_values
    entries = _kernel_cache.entries()
    assert len(entries) == first["compiled"] and all(e.seconds > 0 and e.target.startswith("sm_") for e in entries)


@pytest.mark.hopper
def test_sm90_dispatch_prefers_triton_hopper():
    q = torch.randn(2, 1024, 16, 128, device="cuda", dtype=torch.bfloat16)
    assert portattn.explain(q, q, q, causal=True, quiet=True).chosen == "triton_hopper"


# the Gluon forward (sm90 fast path): odd lengths, seqlen_q != seqlen_k both ways (rows that see no
# key), GQA, a (batch, heads, seqlen, dim) layout, blocks that outrun a consumer's causal range
GLUON_CASES = [
    Case(batch=2, seqlen_q=1024, seqlen_k=1024, heads_q=8, heads_kv=8, head_dim=128),
    Case(batch=2, seqlen_q=1024, seqlen_k=1024, heads_q=8, heads_kv=8, head_dim=128, causal=True),
    Case(batch=1, seqlen_q=1000, seqlen_k=3001, heads_q=8, heads_kv=2, head_dim=128, causal=True),
    Case(batch=1, seqlen_q=3001, seqlen_k=1000, heads_q=8, heads_kv=8, head_dim=64, causal=True),
    Case(batch=2, seqlen_q=777, seqlen_k=1234, heads_q=4, heads_kv=4, head_dim=64, layout="bhsd", causal=True),
    Case(batch=3, seqlen_q=129, seqlen_k=65, heads_q=6, heads_kv=3, head_dim=64),
    Case(batch=1, seqlen_q=1, seqlen_k=5, heads_q=2, heads_kv=1, head_dim=128, causal=True),
    Case(batch=1, seqlen_q=300, seqlen_k=17, heads_q=4, heads_kv=4, head_dim=128, causal=True),
    # the last key block holds 26 keys: a masked tail without a band
    Case(batch=2, seqlen_q=700, seqlen_k=1050, heads_q=4, heads_kv=2, head_dim=128),
    # persistent programs take 3-4 tiles each: Q's two buffers per consumer wrap round (d=64)
    Case(batch=4, seqlen_q=1000, seqlen_k=1000, heads_q=16, heads_kv=4, head_dim=64),
    Case(batch=4, seqlen_q=1000, seqlen_k=1000, heads_q=16, heads_kv=16, head_dim=64, causal=True),
    # a window past 32 bits on the right: the band is clipped to the lengths before any kernel adds it
    Case(batch=1, seqlen_q=300, seqlen_k=333, heads_q=4, heads_kv=4, head_dim=64, window=(-1, 2**31 - 8)),
]
GLUON_MATRIX = [(c, torch.bfloat16) for c in GLUON_CASES] + [(c, torch.float16) for c in GLUON_CASES[::3]]


@pytest.mark.hopper
@pytest.mark.parametrize("case,dtype", GLUON_MATRIX, ids=[f"{c.name}-{str(d)[6:]}" for c, d in GLUON_MATRIX])
def test_gluon_forward_on_gpu(case, dtype, monkeypatch):
    """Forward (Gluon) and gradients (Triton, from the Gluon forward's lse) against the reference; the
    Gluon kernel must have run."""
    from portattn.backends.triton_hopper import launch

    calls = []
    real = launch._forward_gluon
    monkeypatch.setattr(launch, "_forward_gluon", lambda *a: calls.append(1) or real(*a))
    result = run_case("triton_hopper", case, device="cuda", dtype=dtype)
    result.raise_for_failure()
    assert result.status == "pass", result.message
    assert calls, "the Gluon forward did not run"


# schedule options (pingpong, persistent, consumers) x the causal and uneven cases (in a short last tile
# some consumers have no rows); 3 consumers at d=64 only
GLUON_VARIANTS = [
    (case, variant)
    for case in GLUON_CASES[1:5] + GLUON_CASES[-2:]
    for variant in [(True, False, 2), (True, True, 2), (False, True, 2), (False, False, 3), (False, True, 3)]
    if variant[2] == 2 or case.head_dim == 64
]


@pytest.mark.hopper
@pytest.mark.parametrize("case,variant", GLUON_VARIANTS, ids=[f"{c.name}-{v}" for c, v in GLUON_VARIANTS])
def test_gluon_forward_variants_on_gpu(case, variant, monkeypatch):
    """The Gluon forward's schedule options (tuning may pick any of them) on the causal and uneven cases."""
    from portattn.backends.triton_hopper import configs

    pingpong, persistent, consumers = variant
    regs = 160 if consumers == 3 else 240  # three consumer warpgroups share the registers
    cfg = configs.WsConfig(64, 128, 3, regs, pingpong=pingpong, persistent=persistent, consumers=consumers)
    monkeypatch.setattr(configs, "WS_OVERRIDE", [cfg])
    result = run_case("triton_hopper", case, device="cuda", dtype=torch.bfloat16)
    result.raise_for_failure()
    assert result.status == "pass", result.message


# one key block at a time per consumer (``WsConfig.overlap=False``): four consumers on 64-key blocks (a
# 1k head is four whole 256-row tiles), and two or three consumers, on the d=64 cases
SERIAL_VARIANTS = [
    (case, variant)
    for case in GLUON_CASES
    if case.head_dim == 64
    for variant in [(4, 64, 6, True), (4, 64, 4, False), (3, 128, 3, True), (2, 128, 3, True)]
]


@pytest.mark.hopper
@pytest.mark.parametrize("case,variant", SERIAL_VARIANTS, ids=[f"{c.name}-{v}" for c, v in SERIAL_VARIANTS])
def test_gluon_serial_consumers_on_gpu(case, variant, monkeypatch):
    """The Gluon forward without the intra-warpgroup overlap, 2-4 consumers, against the reference."""
    from portattn.backends.triton_hopper import configs

    consumers, block_n, stages, persistent = variant
    regs = {2: 240, 3: 160, 4: 120}[consumers]
    cfg = configs.WsConfig(64, block_n, stages, regs, persistent=persistent, consumers=consumers, overlap=False)
    monkeypatch.setattr(configs, "WS_OVERRIDE", [cfg])
    result = run_case("triton_hopper", case, device="cuda", dtype=torch.bfloat16)
    result.raise_for_failure()
    assert result.status == "pass", result.message


# the scheduled walk (``WsConfig.scheduled``): a host-made tile list for causal-type bands, including
# bottom-right bands with rows that see no key, GQA, short last tiles and programs with uneven lists
SCHEDULED_CASES = [case for case in GLUON_CASES if case.causal] + [
    Case(batch=4, seqlen_q=1024, seqlen_k=1024, heads_q=33, heads_kv=11, head_dim=64, causal=True),
]
SCHEDULED_VARIANTS = [
    (case, variant)
    for case in SCHEDULED_CASES
    for variant in [(True, 2), (False, 2), (False, 3)]
    if variant[1] == 2 or case.head_dim == 64
]


@pytest.mark.hopper
@pytest.mark.parametrize("case,variant", SCHEDULED_VARIANTS, ids=[f"{c.name}-{v}" for c, v in SCHEDULED_VARIANTS])
def test_gluon_scheduled_walk_on_gpu(case, variant, monkeypatch):
    """The scheduled walk against the reference; its tile list must have been made and used."""
    from portattn.backends.triton_hopper import configs, launch

    pingpong, consumers = variant
    regs = 160 if consumers == 3 else 240
    cfg = configs.WsConfig(64, 128, 3, regs, pingpong=pingpong, persistent=True, consumers=consumers, scheduled=True)
    monkeypatch.setattr(configs, "WS_OVERRIDE", [cfg])
    made = []
    real = launch._tile_schedule
    monkeypatch.setattr(launch, "_tile_schedule", lambda *a: made.append(1) or real(*a))
    launch._gluon_plans.clear()
    result = run_case("triton_hopper", case, device="cuda", dtype=torch.bfloat16)
    result.raise_for_failure()
    assert result.status == "pass", result.message
    assert made, "the scheduled walk did not run"


# repeated calls take the direct launch (``direct.py``): the compiled kernel and descriptor templates
# of the first call, on new tensors. Each is checked against the reference, with the base alignment
# changed between calls of one shape (a misaligned base must not reuse the aligned specialization).
DIRECT_CASES = [
    dict(causal=True, head_dim=128),  # Gluon forward, Triton backward (host descriptors)
    dict(causal=False, head_dim=64, softcap=20.0),  # Triton forward
    dict(causal=True, head_dim=96, window=(300, 0)),
]


@pytest.mark.hopper
@pytest.mark.parametrize("kw", DIRECT_CASES, ids=[str(sorted(kw.items())) for kw in DIRECT_CASES])
def test_direct_launch_repeated_calls_on_gpu(kw):
    from portattn.backends.reference.naive import attention_reference
    from portattn.backends.triton_hopper import direct
    from portattn.testing import assert_close, tolerances

    kw = dict(kw)
    d = kw.pop("head_dim")
    gen = torch.Generator(device="cuda").manual_seed(d)
    launched_before = len(direct._kernels)
    for offset in (0, 0, 1, 0, 1):  # offset 1 element: a base 2 bytes off 16-byte alignment
        buf = torch.randn(2 * 700 * 6 * d * 3 + 8, device="cuda", dtype=torch.bfloat16, generator=gen)
        q, k, v = (buf[offset + i * 2 * 700 * 6 * d :][: 2 * 700 * 6 * d].view(2, 700, 6, d) for i in range(3))
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        out = portattn.attention(q, k, v, backend="triton_hopper", **kw)
        grad = torch.randn_like(out)
        got = torch.autograd.grad(out, (q, k, v), grad)
        qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
        ref = attention_reference(portattn.explain(q, k, v, quiet=True, **kw).call, qd, kd, vd)[0]
        want = torch.autograd.grad(ref, (qd, kd, vd), grad.double())
        assert_close(out, ref, *tolerances.forward(torch.bfloat16), what=f"out (base offset {offset})")
        atol, rtol = tolerances.backward(torch.bfloat16)
        for name, g, w in zip("qkv", got, want, strict=True):
            assert_close(g, w, atol * max(1.0, w.abs().max().item()), rtol, what=f"d{name} (base offset {offset})")
    assert len(direct._kernels) > launched_before, "no kernel was kept for direct launches"


def test_deterministic_backward():
    case = dataclasses.replace(REAL[2], seqlen_q=1024, seqlen_k=1024)
    from portattn.testing import make_inputs

    grads = []
    for _ in range(2):
        q, k, v = make_inputs(case, "cuda", torch.bfloat16, seed=3, requires_grad=True)
        out = portattn.attention(q, k, v, causal=True, backend="triton_hopper")
        out.backward(torch.ones_like(out))
        grads.append((q.grad.clone(), k.grad.clone(), v.grad.clone()))
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def test_torch_compile_fullgraph_on_gpu():
    q, k, v = (torch.randn(2, 512, 8, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))

    def block(q, k, v):
        return portattn.attention(q, k, v, causal=True) * 2

    compiled = torch.compile(block, fullgraph=True)
    out, expected = compiled(q, k, v), block(q, k, v)
    torch.testing.assert_close(out, expected)
    for a, b in zip(
        torch.autograd.grad(out.sum(), (q, k, v)), torch.autograd.grad(expected.sum(), (q, k, v)), strict=True
    ):
        torch.testing.assert_close(a, b)


# precision="fp8" (issue 4): (batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, kwargs)
FP8_CASES = [
    (2, 1024, 1024, 8, 8, 128, {}),
    (1, 777, 1000, 8, 2, 64, {"causal": True}),  # odd lengths, seqlen_q != seqlen_k, GQA
    (2, 1000, 1000, 4, 4, 256, {"window": (100, 0)}),
    (1, 1000, 600, 4, 4, 128, {"causal": True}),  # rows that see no key
    (1, 512, 512, 4, 4, 96, {"softcap": 30.0}),
    (1, 300, 300, 4, 4, 64, {"odd_q_strides": True}),  # Q's strides defeat TMA: Q takes the prepass
    (1, 1000, 1000, 4, 4, 256, {"causal": True}),  # the Gluon forward at d=256
    (2, 1500, 1300, 8, 2, 128, {}),  # GQA, key tail in the last block
]


@pytest.mark.hopper
@pytest.mark.parametrize("case", FP8_CASES, ids=[f"{c[1]}x{c[2]}-d{c[5]}-{sorted(c[6])}" for c in FP8_CASES])
def test_fp8_forward_on_gpu(case, monkeypatch):
    """Against a float64 emulation on the same quantized tiles, and the exact reference. Where
    ``gluon_fp8_reason`` allows, the Gluon forward must have run (else the Triton one)."""
    from portattn._call import normalize
    from portattn.backends.triton_hopper import launch, quant

    gluon_calls = []
    real = launch._forward_gluon
    monkeypatch.setattr(launch, "_forward_gluon", lambda *a: gluon_calls.append(1) or real(*a))

    b, sq, sk, hq, hk, d, kw = case
    kw = dict(kw)
    odd = kw.pop("odd_q_strides", False)
    gen = torch.Generator(device="cuda").manual_seed(sq + d)
    q = torch.randn(b, sq, hq, d + odd, device="cuda", dtype=torch.bfloat16, generator=gen)[..., :d]
    k = torch.randn(b, sk, hk, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(b, sk, hk, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    assert portattn.explain(q, k, v, precision="fp8", quiet=True, **kw).chosen == "triton_hopper"
    out, lse = portattn.attention(q, k, v, precision="fp8", return_lse=True, **kw)
    assert out.dtype == torch.bfloat16 and not out.isnan().any() and not lse.isnan().any()
    call = normalize(q, k, v, causal=kw.get("causal", False), window=kw.get("window"), scale=None,
                     softcap=kw.get("softcap"), sparsity=None, bias=None, precision="fp8", return_lse=True,
                     top_left=False)  # fmt: skip
    cap = torch.cuda.get_device_capability()
    assert bool(gluon_calls) == (launch.gluon_fp8_reason(call, cap) is None)
    emu_out, emu_lse = quant.emulated_attention(q, k, v, *launch.fp8_blocks(call, cap), **kw)
    exact_out, exact_lse = portattn.attention(q, k, v, backend="reference", return_lse=True, **kw)
    empty = exact_lse == float("-inf")
    assert torch.equal(lse == float("-inf"), empty)
    assert torch.all(out.transpose(1, 2)[empty] == 0)
    err_emu = (out.double() - emu_out.double()).abs()
    assert err_emu.max() < 2**-4 * v.abs().max() + 0.01 and err_emu.mean() < 0.005, (err_emu.max(), err_emu.mean())
    err = (out.double() - exact_out.double()).abs()
    assert err.pow(2).mean().sqrt() < 0.02, err.pow(2).mean().sqrt()
    assert (lse.double() - exact_lse.double())[~empty].abs().max() < 0.2


# (pingpong, persistent, stages, permute_v: V^T's keys in P's register order)
FP8_VARIANTS = [(1, 0, 2, 0), (0, 1, 3, 0), (1, 1, 4, 0), (0, 1, 3, 1), (1, 0, 2, 1)]


@pytest.mark.hopper
@pytest.mark.parametrize("variant", FP8_VARIANTS, ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_fp8_gluon_variants_on_gpu(variant, head_dim, monkeypatch):
    """The Gluon FP8 forward's schedule options, causal with odd lengths and GQA: against the emulation."""
    from portattn.backends.triton_hopper import configs, quant

    pingpong, persistent, stages, permute = variant
    gen = torch.Generator(device="cuda").manual_seed(head_dim)
    q = torch.randn(2, 777, 8, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(2, 1001, 2, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    cfg = configs.WsConfig(64, 128, stages, 240, bool(pingpong), bool(persistent), permute_v=bool(permute))
    monkeypatch.setattr(configs, "WS_OVERRIDE", [cfg])
    out = portattn.attention(q, k, v, precision="fp8", causal=True)
    emu = quant.emulated_attention(q, k, v, cfg.block_m, cfg.block_n, causal=True)[0]
    err = (out.double() - emu.double()).abs()
    assert not out.isnan().any() and err.max() < 2**-4 * v.abs().max() + 0.01 and err.mean() < 0.005, err.max()


@pytest.mark.hopper
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_fp8_accuracy_ordering_on_outliers(head_dim):
    """FA3's experiment: with 0.1% outlier entries, rotation + block scales < block scales < per-tensor."""
    from portattn._call import normalize
    from portattn.backends.triton_hopper import launch
    from portattn.backends.triton_hopper.quant import outlier_inputs

    gen = torch.Generator().manual_seed(head_dim)
    q, k, v = (outlier_inputs((2, 1024, 8, head_dim), gen).to("cuda", torch.bfloat16) for _ in range(3))
    exact = portattn.attention(q, k, v, backend="reference").double()
    call = normalize(q, k, v, causal=False, window=None, scale=None, softcap=None, sparsity=None, bias=None,
                     precision="fp8", return_lse=False, top_left=False, requires_grad=False)  # fmt: skip

    def rmse(**options):
        return (launch.forward_fp8(call, q, k, v, **options)[0].double() - exact).pow(2).mean().sqrt().item()

    per_tensor, block, rotated = rmse(rotate=False, per_tensor=True), rmse(rotate=False), rmse()
    assert rotated < block < per_tensor, (rotated, block, per_tensor)


@pytest.mark.hopper
@pytest.mark.parametrize("permute_v", [False, True])
def test_fp8_prequantized_inputs_on_gpu(permute_v, monkeypatch):
    """FA3's API shape: float8 inputs with (batch, heads_kv) descales, GQA, causal, odd lengths; V^T's
    keys in plain order or in P's register order."""
    from portattn.backends.triton_hopper import configs, quant

    cfg = configs.pick_ws(128, True, 1333, fp8=True)._replace(permute_v=permute_v)
    monkeypatch.setattr(configs, "WS_OVERRIDE", [cfg])

    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, s, h, 128, generator=gen) for s, h in ((1000, 8), (1333, 2), (1333, 2)))
    (q8, qd), (k8, kd), (v8, vd) = (quant.quantize_per_kv_head(x, 2) for x in (q, k, v))
    q8, k8, v8, qd, kd, vd = (t.cuda() for t in (q8, k8, v8, qd, kd, vd))
    out = portattn.attention(q8, k8, v8, precision="fp8", q_descale=qd, k_descale=kd, v_descale=vd, causal=True)
    assert out.dtype == torch.bfloat16 and not out.isnan().any()
    heads = torch.arange(8, device="cuda") // 4
    qx = (q8.double() * qd[:, None, heads, None]).float()
    kx, vx = ((x8.double() * d[:, None, :, None]).float() for x8, d in ((k8, kd), (v8, vd)))
    want = portattn.attention(qx, kx, vx, backend="reference", causal=True).double()
    err = (out.double() - want).abs()
    assert err.max() < 2**-4 * vx.abs().max() + 0.01 and err.mean() < 0.005, (err.max(), err.mean())


# KV offload (the core's chunk loop, portattn/_offload.py): k, v in host memory, q on the GPU; a budget
# of about 1024 keys per chunk, so that every case streams several chunks
OFFLOAD_CASES = [
    dict(batch=1, seqlen_q=1000, seqlen_k=5003, heads_q=8, heads_kv=2, head_dim=128, causal=True, host="pinned"),
    dict(batch=2, seqlen_q=333, seqlen_k=4099, heads_q=4, heads_kv=4, head_dim=64, host="pinned"),  # batch-wise
    dict(batch=2, seqlen_q=512, seqlen_k=3000, heads_q=4, heads_kv=1, head_dim=128, window=(700, 0), host="pageable"),
    dict(batch=1, seqlen_q=2000, seqlen_k=600, heads_q=2, heads_kv=2, head_dim=64, causal=True, host="strided"),
]


@pytest.mark.hopper
@pytest.mark.parametrize("case", OFFLOAD_CASES, ids=[str(sorted(c.items())) for c in OFFLOAD_CASES])
def test_kv_offload_on_gpu(case):
    """Offloaded = in-memory (to bf16 rounding; bit for bit with one chunk) = the float64 reference."""
    from portattn import _offload
    from portattn.backends.reference.naive import attention_reference
    from portattn.testing import assert_close, tolerances

    case = dict(case)
    b, sq, sk, hq, hkv, d, host = (case.pop(n) for n in ("batch", "seqlen_q", "seqlen_k", "heads_q", "heads_kv",
                                                          "head_dim", "host"))  # fmt: skip
    gen = torch.Generator(device="cuda").manual_seed(sk)
    q = torch.randn(b, sq, hq, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    k_dev, v_dev = (torch.randn(b, sk, hkv, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    if host == "strided":  # (batch, heads, seqlen, dim) in memory, viewed in portattn's layout
        k, v = (t.transpose(1, 2).contiguous().cpu().transpose(1, 2) for t in (k_dev, v_dev))
    else:
        k, v = (t.cpu().pin_memory() if host == "pinned" else t.cpu() for t in (k_dev, v_dev))
    budget = 2 * b * hkv * 2 * d * 2 * 1024  # two slots of 1024 keys of K and V
    with portattn.kv_budget(budget):
        info = portattn.explain(q, k, v, quiet=True, **case)
        out, lse = portattn.attention(q, k, v, return_lse=True, **case)
    assert info.chosen == "triton_hopper" and "KV offload" in (info.note or ""), str(info)
    mem_out, mem_lse = portattn.attention(q, k_dev, v_dev, return_lse=True, backend="triton_hopper", **case)
    ref_out, ref_lse = attention_reference(info.call, q.double(), k_dev.double(), v_dev.double())
    atol, rtol = tolerances.forward(torch.bfloat16)
    assert_close(out, ref_out, atol, rtol)
    assert_close(out, mem_out, atol, rtol, what="offloaded vs in-memory")
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "rows that see no key: lse -inf"
    assert_close(lse[torch.isfinite(lse)], ref_lse[torch.isfinite(ref_lse)].float(), 1e-3, 1e-3, what="lse")
    with portattn.kv_budget(1 << 34):  # one chunk: the same kernel on the same keys
        assert _offload.chunk_keys(info.call, 1 << 34) >= sk
        one = portattn.attention(q, k, v, **case)
    assert torch.equal(one, mem_out), "one chunk must equal the in-memory call bit for bit"


@pytest.mark.hopper
def test_kv_offload_memory_stays_within_budget():
    """The device holds at most the budget of K/V (plus the output's float32 accumulator), whatever
    seqlen_k is: 4x the keys, the same peak."""
    q = torch.randn(1, 256, 8, 128, device="cuda", dtype=torch.bfloat16)
    budget = 8 << 20
    out_f32 = q.numel() * 4
    peaks = []
    for sk in (32768, 131072):  # 32 and 128 MiB of K/V against an 8 MiB budget
        k, v = (torch.randn(1, sk, 2, 128, dtype=torch.bfloat16).pin_memory() for _ in range(2))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with portattn.kv_budget(budget):
            out = portattn.attention(q, k, v, causal=True)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
        assert torch.isfinite(out).all()
        del out
    assert max(peaks) <= budget + 6 * out_f32, f"peak {peaks} bytes against a budget of {budget}"
    assert abs(peaks[1] - peaks[0]) <= out_f32, f"the peak grew with seqlen_k: {peaks}"


# cuda_volta on a newer GPU as the stand-in for Volta (its source uses sm70 instructions only; the
# CPU tests check the PTX): fp16 forward and lse against the reference, poisoned outputs
VOLTA_CASES = [c for c in REAL + GLUON_CASES if c.head_dim in (64, 128) and c.softcap is None]


@pytest.mark.parametrize("case", VOLTA_CASES, ids=[c.name for c in VOLTA_CASES])
def test_cuda_volta_on_gpu(case):
    if "cuda_volta" not in _backends():
        pytest.skip("cuda_volta is not available here or not selected (PORTATTN_GPU_TEST_BACKENDS)")
    result = run_case("cuda_volta", case, device="cuda", dtype=torch.float16)
    result.raise_for_failure()
    assert result.status == "pass", result.message


# block-sparse patterns through triton_hopper's forward and backward
SPARSE_GPU = [
    ("bigbird", dict(causal=False), lambda: __import__("portattn").sparse.bigbird(256, 128, 2, seed=3)),
    ("window", dict(causal=True), lambda: __import__("portattn").sparse.sliding_window(700, 0)),
    ("global|random", dict(causal=True),
     lambda: __import__("portattn").sparse.global_tokens(64) | __import__("portattn").sparse.random_blocks(3)),
]  # fmt: skip


@pytest.mark.hopper
@pytest.mark.parametrize("name,kw,make", SPARSE_GPU, ids=[s[0] for s in SPARSE_GPU])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_sparse_forward_on_gpu(name, kw, make, head_dim):
    from portattn.testing import assert_close, tolerances

    gen = torch.Generator(device="cuda").manual_seed(head_dim)
    q = torch.randn(2, 2000, 8, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(2, 2100, 4, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    pattern = make()
    out, lse = portattn.attention(q, k, v, sparsity=pattern, backend="triton_hopper", return_lse=True, **kw)
    ref, ref_lse = portattn.attention(q.float(), k.float(), v.float(), sparsity=pattern, backend="reference",
                                      return_lse=True, **kw)  # fmt: skip
    assert_close(out, ref, *tolerances.forward(torch.bfloat16))
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))


@pytest.mark.hopper
@pytest.mark.parametrize("name,kw,make", SPARSE_GPU, ids=[s[0] for s in SPARSE_GPU])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_sparse_backward_on_gpu(name, kw, make, head_dim):
    """dQ, dK, dV of a pattern (the kernels' list walks) against the float64 reference's autograd."""
    from portattn.backends.reference.naive import attention_reference
    from portattn.testing import assert_close, tolerances

    gen = torch.Generator(device="cuda").manual_seed(head_dim + 1)
    q = torch.randn(1, 1500, 8, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(1, 1700, 2, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    dout = torch.randn(1, 1500, 8, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    pattern = make()
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = portattn.attention(*leaves, sparsity=pattern, backend="triton_hopper", **kw)
    got = torch.autograd.grad(out, leaves, dout)
    call = portattn.explain(q, k, v, sparsity=pattern, quiet=True, **kw).call
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad(attention_reference(call, *exact)[0], exact, dout.double())
    for what, g, w in zip("qkv", got, want, strict=True):
        assert not g.isnan().any(), f"d{what}: NaN"
        assert_close(g, w.float(), *tolerances.backward(torch.bfloat16), what=f"d{what}")


@pytest.mark.hopper
@pytest.mark.parametrize("kind", ["qk_drop", "hash_buckets"])
def test_dynamic_sparse_on_gpu(kind):
    """qk_drop / hash_buckets through triton_hopper's interval walk at real sizes, causal with GQA:
    forward and gradients against the float64 reference of the dense mask."""
    from portattn import sparse
    from portattn.backends.reference.naive import attention_reference
    from portattn.testing import assert_close, tolerances

    gen = torch.Generator(device="cuda").manual_seed(len(kind))
    b, s, hq, hk, d = 1, 3001, 8, 2, 128
    q = torch.randn(b, s, hq, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(b, s, hk, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    dout = torch.randn_like(q)
    if kind == "qk_drop":
        keep_q = torch.rand(b, s, hq, device="cuda", generator=gen) < 0.5
        pattern = sparse.qk_drop(keep_q, torch.rand(b, s, hk, device="cuda", generator=gen) < 0.5)
    else:
        pattern = sparse.hash_buckets(torch.randint(0, 8, (b, s, hq), device="cuda", generator=gen),
                                      torch.randint(0, 8, (b, s, hk), device="cuda", generator=gen))  # fmt: skip
    assert portattn.explain(q, k, v, causal=True, sparsity=pattern, quiet=True).chosen == "triton_hopper"
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = portattn.attention(*leaves, causal=True, sparsity=pattern)
    got = torch.autograd.grad(out, leaves, dout)
    mask = pattern.allowed_mask(b, hq, s, s, "cuda")
    call = portattn.explain(q, k, v, causal=True, sparsity=sparse.dense_mask(mask), quiet=True).call
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    ref = attention_reference(call, *exact)[0]
    want = torch.autograd.grad(ref, exact, dout.double())
    assert_close(out, ref.float(), *tolerances.forward(torch.bfloat16))
    for what, g, w in zip("qkv", got, want, strict=True):
        assert not g.isnan().any()
        assert_close(g, w.float(), *tolerances.backward(torch.bfloat16), what=f"d{what}")
