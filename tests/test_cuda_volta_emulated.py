"""``cuda_volta``'s kernels run on the CPU: ``tests/sm70_emulator.h`` stands in for the GPU (a thread
per CUDA thread, barriers, warp shuffles, WMMA with a scrambled element order), the host compiler
builds each template instance with the address sanitizer, and ``run_case`` judges forward, lse and
gradients against the float64 reference on fresh fp16 inputs with poisoned outputs. The same host
code as on the GPU plans the launches (``cuda_source.forward`` / ``backward``, ``plan``); only the
launcher differs. Slow-ish (a compile per instance), so the cases are small."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from portattn.backends import cuda_source
from portattn.backends.cuda_volta import CudaVoltaBackend, plan, wmma_order
from portattn.testing import Case, default_cases, run_case
from tests.cuda_host import kernel_params


def _cuda_include() -> Path | None:
    """The CUDA toolkit's include directory (for cuda_fp16.h's host half type), or None."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parent.parent))
    found = [Path(r) / "include" for r in roots if r and (Path(r) / "include" / "cuda_fp16.h").exists()]
    return found[0] if found else None


GXX = shutil.which("g++")
CUDA_INCLUDE = _cuda_include()
HERE = Path(__file__).parent
pytestmark = pytest.mark.skipif(
    GXX is None or CUDA_INCLUDE is None,
    reason="needs g++ and the CUDA toolkit's headers (cuda_fp16.h; CI machines have both)",
)

HARNESS = r"""
namespace portattn_sm70 {
__attribute__((aligned(128))) unsigned char smem_raw[SMEM_BYTES];  // the launch's dynamic shared memory
}

struct Buffer {
  const char* path;
  char* data;
  size_t bytes;
};
static std::vector<Buffer> buffers;

// "path:offset:bytes": a tensor's whole storage, read from `path`, written back after the launch
static char* pointer_arg(char* spec) {
  char* offset = std::strchr(spec, ':');
  char* bytes = std::strchr(offset + 1, ':');
  *offset = 0;
  Buffer b{spec, static_cast<char*>(std::malloc(std::strtoull(bytes + 1, nullptr, 10))),
           std::strtoull(bytes + 1, nullptr, 10)};
  FILE* f = std::fopen(spec, "rb");
  if (!f || std::fread(b.data, 1, b.bytes, f) != b.bytes) emu::fail("cannot read a buffer");
  std::fclose(f);
  buffers.push_back(b);
  return b.data + std::strtoull(offset + 1, nullptr, 10);
}

int main(int argc, char** argv) {
  if (argc != 4 + ARGC) emu::fail("wrong argument count");
  const unsigned grid_x = std::strtoul(argv[1], nullptr, 10), grid_y = std::strtoul(argv[2], nullptr, 10);
  const int threads = std::atoi(argv[3]);
  char** a = argv + 4;
  DECLARE_ARGS
  emu::launch(grid_x, grid_y, threads, portattn_sm70::smem_raw, sizeof(portattn_sm70::smem_raw),
              [&] { KERNEL(CALL_ARGS); });
  for (const Buffer& b : buffers) {
    FILE* f = std::fopen(b.path, "wb");
    if (!f || std::fwrite(b.data, 1, b.bytes, f) != b.bytes) emu::fail("cannot write a buffer");
    std::fclose(f);
    std::free(b.data);
  }
  return 0;
}
"""


def _declare(i: int, param: str) -> str:
    if param.endswith("*"):
        return f"auto a{i} = reinterpret_cast<{param}>(pointer_arg(a[{i}]));"
    parse = {"long long": "std::strtoll(a[{i}], nullptr, 10)", "int": "std::atoi(a[{i}])",
             "float": "std::strtof(a[{i}], nullptr)"}[param]  # fmt: skip
    return f"const {param} a{i} = {parse.format(i=i)};"


def _params(name: str) -> list[str]:
    """The C parameter types of kernel instance ``name`` (the probe's own, or a kernel of the sources)."""
    if name == wmma_order.PROBE_KERNEL:
        return ["int*", "int*"]
    return kernel_params(plan.CSRC, plan.SOURCES, name.split("::")[1].split("<")[0])


@functools.cache
def _binary(source: str, name: str, smem_bytes: int, order: int, build_dir: Path) -> Path:
    """The emulator built around kernel ``name`` of ``source`` (one per instance, shared-memory size and
    the emulator's WMMA element order: 0 scrambled, 1 mma.m16n8k16's)."""
    params = _params(name)
    harness = (
        HARNESS.replace("SMEM_BYTES", str(max(smem_bytes, 16)))
        .replace("ARGC", str(len(params)))
        .replace("DECLARE_ARGS", "\n  ".join(_declare(i, p) for i, p in enumerate(params)))
        .replace("KERNEL", name)
        .replace("CALL_ARGS", ", ".join(f"a{i}" for i in range(len(params))))
    )
    text = f'#define EMU_WMMA_ORDER {order}\n#include "sm70_emulator.h"\n' + source + harness
    tag = hashlib.sha256(text.encode()).hexdigest()[:16]
    unit, binary = build_dir / f"{tag}.cpp", build_dir / tag
    if not binary.exists():
        unit.write_text(text)
        cmd = [GXX, "-std=c++20", "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer", "-pthread",
               f"-I{HERE}", f"-I{CUDA_INCLUDE}", str(unit), "-o", str(binary)]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
    return binary


def _storage_spec(tensor: torch.Tensor, pointer: int, path: Path) -> tuple[str, torch.Tensor]:
    storage = torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage())
    storage.numpy().tofile(path)
    return f"{path}:{pointer - storage.data_ptr()}:{storage.numel()}", storage


def _launcher(backend: EmulatedVolta, source: str, tensors: dict[int, torch.Tensor], *launches) -> None:
    """Runs each launch in the emulator, on copies of the storages of ``tensors`` (by data pointer)."""
    for launch in launches:
        binary = _binary(source, launch.name, launch.smem_bytes, backend.order, backend.build_dir)
        argv, written = [], []
        for i, (param, arg) in enumerate(zip(_params(launch.name), launch.args, strict=True)):
            if param.endswith("*"):
                path = backend.build_dir / f"buf{os.getpid()}_{i}"
                spec, storage = _storage_spec(tensors[arg], arg, path)
                argv.append(spec)
                written.append((path, storage))
            elif param == "float":
                argv.append(float(arg).hex())
            else:
                argv.append(str(int(arg)))
        grid = [str(g) for g in launch.grid]
        env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0"}
        result = subprocess.run([str(binary), *grid, str(launch.threads), *argv], capture_output=True, text=True,
                                timeout=600, env=env)  # fmt: skip
        assert result.returncode == 0, f"{launch.name}: exit {result.returncode}\n{result.stderr[-3000:]}"
        for path, storage in written:
            storage.copy_(torch.from_numpy(np.fromfile(path, dtype=np.uint8)))


def _recording(plan_fn, tensors: dict[int, torch.Tensor], **options):
    """``plan_fn`` (a plan's launch function), noting the tensors it is given by data pointer."""

    def wrapper(call, *args):
        tensors.update({t.data_ptr(): t for t in args if isinstance(t, torch.Tensor)})
        return plan_fn(call, *args, **options)

    return wrapper


class EmulatedVolta(CudaVoltaBackend):
    """``cuda_volta`` with its launches run by the emulator, on CPU tensors. ``order``: the emulator's
    WMMA element order (0 scrambled: the shared-memory softmax; 1 mma.m16n8k16's: the register
    softmax), read back by the backend's own probe as on a GPU."""

    capabilities = dataclasses.replace(CudaVoltaBackend.capabilities, devices=frozenset({"cpu"}),
                                       compute_capability=None)  # fmt: skip

    def __init__(self, build_dir: Path, order: int = 0) -> None:
        self.build_dir, self.order = build_dir, order
        source = plan.source() + wmma_order.PROBE
        self.wmma = wmma_order.read(
            lambda launch, *tensors: _launcher(self, source, {t.data_ptr(): t for t in tensors}, launch), "cpu"
        )
        self.facts = wmma_order.register_softmax(self.wmma)

    def available(self) -> str | None:
        return None

    def forward(self, call, q, k, v):
        tensors: dict[int, torch.Tensor] = {}
        launcher = functools.partial(_launcher, self, plan.source(self.facts), tensors)
        fwd = _recording(plan.fwd_launch, tensors, register_softmax=self.facts is not None)
        return cuda_source.forward(launcher, fwd, call, q, k, v)

    def backward(self, call, q, k, v, out, lse, dout, dlse=None):
        tensors: dict[int, torch.Tensor] = {}
        launcher = functools.partial(_launcher, self, plan.source(), tensors)
        return cuda_source.backward(launcher, _recording(plan.bwd_launches, tensors), call, q, k, v, out, lse, dout)


@pytest.fixture(scope="module", params=[0, 1, 2], ids=["scrambled_order", "mma_order", "mma_order_a_shuffled"])
def emulated(request, tmp_path_factory) -> EmulatedVolta:
    """Both softmax paths: a scrambled WMMA order (shared memory), mma.m16n8k16's (registers) and the
    same with A held by lane ^ 16 (registers, P shuffled into place)."""
    return EmulatedVolta(tmp_path_factory.mktemp("sm70_emulator"), order=request.param)


def test_the_probe_reads_the_element_order(emulated):
    """The backend's probe, run in the emulator, reads back the emulator's order, and the host's check
    takes the register softmax exactly where that order allows it."""
    mma = wmma_order.mma_order()
    if emulated.order == 1:
        assert emulated.wmma == mma
        assert emulated.facts == wmma_order.register_softmax(mma) is not None
        assert set(emulated.facts.a_xor) == {0}
    elif emulated.order == 2:
        assert emulated.wmma == wmma_order.WmmaOrder(mma.c, tuple(mma.a[lane ^ 16] for lane in range(32)))
        assert emulated.facts is not None and set(emulated.facts.a_xor) == {16}
    else:
        assert sorted(x for lane in emulated.wmma.c for x in lane) == list(range(256))
        assert emulated.facts is None


# odd lengths, seqlen_q != seqlen_k both ways, GQA, causal (bottom-right), a window, rows that see no
# key, a strided layout, head dims padded to 64 and the full 128; several key blocks per row block
CASES = [
    Case(batch=1, seqlen_q=70, seqlen_k=150, heads_q=2, heads_kv=1, head_dim=64),
    Case(batch=2, seqlen_q=131, seqlen_k=67, heads_q=2, heads_kv=2, head_dim=40, causal=True),
    Case(batch=1, seqlen_q=97, seqlen_k=201, heads_q=2, heads_kv=1, head_dim=128, causal=True, layout="bhsd"),
    Case(batch=1, seqlen_q=150, seqlen_k=150, heads_q=1, heads_kv=1, head_dim=64, window=(40, 3)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_emulated_kernels_match_the_reference(emulated, case):
    result = run_case(emulated, case, device="cpu", dtype=torch.float16)
    assert result.status == "pass", result.message
    assert set(result.errors) == {"out", "lse", "dq", "dk", "dv"}, result.errors


@pytest.mark.parametrize("case", default_cases("quick"), ids=lambda c: c.name)
def test_emulated_kernels_on_the_case_battery(emulated, case):
    """The battery every backend is judged on (fp16); what cuda_volta does not serve is reported as such."""
    result = run_case(emulated, case, device="cpu", dtype=torch.float16)
    if result.status == "unsupported":
        pytest.skip(f"cuda_volta does not serve it: {result.message}")
    assert result.status == "pass", result.message


FWD_CONFIG_SPACE = [plan.FwdConfig(warps, q_regs) for warps in (4, 8) for q_regs in (True, False)]


@pytest.mark.parametrize("config", FWD_CONFIG_SPACE, ids=lambda c: f"warps{c.warps}_qregs{int(c.q_in_registers)}")
def test_every_forward_config_matches_the_reference(emulated, config, monkeypatch):
    """The configs a GPU sweep may pick (benchmarks/tune_cuda_volta.py), at both tile widths, causal
    with odd lengths and GQA (d=40 padded to 64) and strided (d=128): forward and lse only."""
    if emulated.order == 1:
        pytest.skip("the register path is covered with shuffles by mma_order_a_shuffled")
    for width in (64, 128):
        monkeypatch.setitem(plan.FWD_CONFIGS, width, config)
    for case in (CASES[1], CASES[2]):
        result = run_case(emulated, case, device="cpu", dtype=torch.float16, grad=False)
        assert result.status == "pass", f"{case.name}: {result.message}"
        assert set(result.errors) == {"out", "lse"}, result.errors


def test_emulator_catches_a_kernel_that_assumes_an_element_order(tmp_path):
    """The emulator's point: the same source with the row map replaced by the identity order
    (the order of no GPU) must fail against the reference."""
    broken = plan.source().replace("(pass ? 0 : wr) + static_cast<int>(map.x[i])", "(pass ? i : wr + i)")
    assert broken != plan.source()
    backend = EmulatedVolta(tmp_path)
    _binary.cache_clear()
    original = plan.source
    plan.source = lambda order=None: broken  # type: ignore[assignment]
    try:
        result = run_case(backend, CASES[0], device="cpu", dtype=torch.float16, grad=False)
    finally:
        plan.source = original
        _binary.cache_clear()
    assert result.status == "fail", result


@pytest.mark.parametrize("wrong", ["a_slot", "row_masks"])
def test_emulator_catches_wrong_register_facts(tmp_path, wrong):
    """The register softmax with facts that do not describe the order (P's pairs swapped, or one of
    the two lane bits of a row left out) must fail, not pass by chance."""
    backend = EmulatedVolta(tmp_path, order=1)
    good = backend.facts
    if wrong == "a_slot":
        backend.facts = good._replace(a_slot=(1, 0, *good.a_slot[2:8], 1, 0, *good.a_slot[10:]))
    else:
        backend.facts = good._replace(row_masks=good.row_masks[:1])
    result = run_case(backend, CASES[0], device="cpu", dtype=torch.float16, grad=False)
    assert result.status == "fail", result
