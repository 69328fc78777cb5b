"""Where WMMA m16n16k16 puts each element on this GPU: for every lane, the (row, column) of each
element of the fp32 accumulator and of the fp16 A (row-major) fragment, as the cuda_volta kernels
load them. PTX leaves these orders unspecified and they differ between Volta and newer GPUs; a
forward that keeps S and P in registers has to know them. Prints the two maps and whether each
lane's A elements are a subset of its accumulator elements (P straight from S, without shuffles).

    python3 benchmarks/wmma_layout.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json

import cupy
import numpy as np

from portattn.backends.cuda_volta import plan

PROBE = r"""
extern "C" __global__ void wmma_layout(int* c_pos, int* a_pos) {
  __shared__ __align__(32) float m[16 * 16];
  __shared__ __align__(32) __half h[16 * 16];
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) m[i] = static_cast<float>(i), h[i] = __float2half(static_cast<float>(i));
  __syncwarp();
  portattn_sm70::FragC c;
  portattn_sm70::load_c_row(c, m, 16);
  for (int i = 0; i < 8; ++i) c_pos[lane * 8 + i] = static_cast<int>(c.x[i]);
  portattn_sm70::FragAB a;
  portattn_sm70::load_a_row(a, h, 16);
  for (int i = 0; i < 8; ++i) {
    const __half2 pair = *reinterpret_cast<const __half2*>(&a.x[i]);
    a_pos[lane * 16 + 2 * i] = static_cast<int>(__low2float(pair));
    a_pos[lane * 16 + 2 * i + 1] = static_cast<int>(__high2float(pair));
  }
}
"""


def probe() -> dict:
    module = cupy.RawModule(code=plan.source() + PROBE, options=plan.NVRTC_OPTIONS)
    c_pos, a_pos = cupy.full(32 * 8, -1, cupy.int32), cupy.full(32 * 16, -1, cupy.int32)
    module.get_function("wmma_layout")((1,), (32,), (c_pos, a_pos))
    c, a = cupy.asnumpy(c_pos).reshape(32, 8), cupy.asnumpy(a_pos).reshape(32, 16)
    assert sorted(c.ravel().tolist()) == list(range(256)), "every accumulator element once"
    subset = all(set(a[lane]) <= set(c[lane]) for lane in range(32))
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    return {
        "device": props["name"].decode(), "cc": f"{props['major']}.{props['minor']}",
        "c_row_col": [[divmod(int(x), 16) for x in c[lane]] for lane in range(32)],
        "a_row_col": [[divmod(int(x), 16) for x in a[lane]] for lane in range(32)],
        "a_copies": int(np.bincount(a.ravel(), minlength=256).max()), "a_within_c": subset,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the maps to this file")
    args = ap.parse_args()
    layout = probe()
    print(f"{layout['device']} (cc {layout['cc']}): (row, col) per element, lanes 0-31")
    for lane in range(32):
        print(f"lane {lane:2d}  C {layout['c_row_col'][lane]}")
        print(f"         A {layout['a_row_col'][lane]}")
    print(f"each A element held by up to {layout['a_copies']} lanes; A within the lane's C: {layout['a_within_c']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(layout, f)


if __name__ == "__main__":
    main()
