"""The WMMA m16n16k16 element order of a GPU, and what the forward's register softmax needs of it.

PTX leaves unspecified which lane holds which element of a fragment, and the order differs between
Volta and newer GPUs. The host reads it from the device once (``PROBE``: a kernel that loads
fragments of matrices of element numbers) and ``register_softmax`` checks that:

- each lane's accumulator slots fall into row groups, the same slots for every lane;
- the lanes that share a row are the lane XOR every combination of some lane bits;
- each element of the A operand (row-major) is an accumulator slot of the same lane or of the lane
  XOR a mask, the same slot and mask for every lane, with both halves of a pair from one lane.

If all hold, ``header`` writes the facts as C++ constants and the forward keeps S and P in
registers; otherwise it goes through shared memory. No order is assumed anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from portattn.backends.cuda_source import Launch

# One warp: c_pos[lane * 8 + slot] and a_pos[lane * 16 + element] = row * 16 + col. Compiled after
# the backend's source (it uses common_sm70.cuh's WMMA functions).
PROBE = r"""
namespace portattn_sm70 {
__global__ void wmma_order_probe(int* c_pos, int* a_pos) {
  extern __shared__ __align__(128) unsigned char smem_raw[];  // PROBE_SMEM_BYTES
  float* numbers = reinterpret_cast<float*>(smem_raw);
  __half* halves = reinterpret_cast<__half*>(numbers + 16 * 16);
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) {
    numbers[i] = static_cast<float>(i);
    halves[i] = __float2half(static_cast<float>(i));  // integers up to 256 are exact in fp16
  }
  __syncwarp();
  FragC c;
  load_c_row(c, numbers, 16);
  for (int i = 0; i < 8; ++i) c_pos[lane * 8 + i] = static_cast<int>(c.x[i]);
  FragAB a;
  load_a_row(a, halves, 16);
  for (int i = 0; i < 8; ++i) {
    const __half2 pair = *reinterpret_cast<const __half2*>(&a.x[i]);
    a_pos[lane * 16 + 2 * i] = static_cast<int>(__low2float(pair));
    a_pos[lane * 16 + 2 * i + 1] = static_cast<int>(__high2float(pair));
  }
}
}  // namespace portattn_sm70
"""
PROBE_KERNEL = "portattn_sm70::wmma_order_probe"  # for name_expressions
PROBE_SMEM_BYTES = 16 * 16 * (4 + 2)  # one warp, 32 threads


class WmmaOrder(NamedTuple):
    """Where each fragment element sits in its 16x16 matrix (``row * 16 + col``)."""

    c: tuple[tuple[int, ...], ...]  # [lane][slot], 32 x 8: the fp32 accumulator
    a: tuple[tuple[int, ...], ...]  # [lane][element], 32 x 16: the fp16 A operand, row-major

    @classmethod
    def from_flat(cls, c_pos, a_pos) -> WmmaOrder:
        c_pos, a_pos = [int(x) for x in c_pos], [int(x) for x in a_pos]
        return cls(tuple(tuple(c_pos[8 * lane : 8 * lane + 8]) for lane in range(32)),
                   tuple(tuple(a_pos[16 * lane : 16 * lane + 16]) for lane in range(32)))  # fmt: skip


def read(run: Callable[..., None], device: torch.device | str) -> WmmaOrder:
    """The order as ``PROBE`` reads it: ``run(launch, *tensors)`` runs the probe's launch (compiled
    from the backend's source + ``PROBE``) on the device, its pointers those of ``tensors``."""
    c_pos = torch.full((256,), -1, dtype=torch.int32, device=device)
    a_pos = torch.full((512,), -1, dtype=torch.int32, device=device)
    run(Launch(PROBE_KERNEL, (1, 1), 32, PROBE_SMEM_BYTES, (c_pos.data_ptr(), a_pos.data_ptr())), c_pos, a_pos)
    return WmmaOrder.from_flat(c_pos.tolist(), a_pos.tolist())


class RegisterSoftmax(NamedTuple):
    """What the forward's register softmax needs of an order (see the module docstring)."""

    group_of: tuple[int, ...]  # [slot] -> the lane's row group
    group_slot: tuple[int, ...]  # [group] -> a slot in it
    row_masks: tuple[int, ...]  # single lane bits; the lanes of a row: lane XOR their combinations
    a_slot: tuple[int, ...]  # [A element] -> accumulator slot
    a_xor: tuple[int, ...]  # [A element] -> from lane XOR this


def _span(masks: list[int]) -> set[int]:
    span = {0}
    for m in masks:
        span |= {x ^ m for x in span}
    return span


def register_softmax(order: WmmaOrder) -> RegisterSoftmax | None:
    """The facts, or None where the order does not allow the register softmax."""
    c, a = order.c, order.a
    if sorted(x for lane in c for x in lane) != list(range(256)):
        return None
    if any(len(lane) != 16 or not all(0 <= x < 256 for x in lane) for lane in a):  # e.g. registers left unset
        return None
    rows = [[pos // 16 for pos in lane] for lane in c]
    first = []  # lane 0's distinct rows, in slot order
    for r in rows[0]:
        if r not in first:
            first.append(r)
    group_of = tuple(first.index(r) for r in rows[0])
    for lane_rows in rows:  # the same slot grouping in every lane
        if any((group_of[i] == group_of[j]) != (lane_rows[i] == lane_rows[j]) for i in range(8) for j in range(8)):
            return None
    groups = len(first)
    holders = {0 ^ lane for lane in range(32) if first[0] in rows[lane]}
    bits = 0
    for lane in holders:
        bits |= lane
    masks = [1 << k for k in range(5) if bits >> k & 1]
    if holders != _span(masks):
        return None
    for lane in range(32):  # every row: exactly the lanes lane ^ span, holding it in the same group
        for g in range(groups):
            row = rows[lane][group_of.index(g)]
            holding = {other for other in range(32) if row in rows[other]}
            if holding != {lane ^ x for x in holders}:
                return None
            if any(rows[other][i] == row and group_of[i] != g for other in holding for i in range(8)):
                return None
    where = {pos: (lane, slot) for lane in range(32) for slot, pos in enumerate(c[lane])}
    a_slot, a_xor = [], []
    for e in range(16):
        lane0, slot = where[a[0][e]]
        if any(c[lane ^ lane0][slot] != a[lane][e] for lane in range(32)):
            return None
        a_slot.append(slot)
        a_xor.append(lane0)
    if any(a_xor[2 * p] != a_xor[2 * p + 1] for p in range(8)):
        return None
    group_slot = tuple(group_of.index(g) for g in range(groups))
    return RegisterSoftmax(group_of, group_slot, tuple(masks), tuple(a_slot), tuple(a_xor))


def header(facts: RegisterSoftmax | None) -> str:
    """C++ constants for ``facts`` (common_sm70.cuh's defaults where None)."""
    if facts is None:
        return ""

    bits = 0
    for m in facts.row_masks:
        bits |= m

    def table(name: str, values) -> str:
        body = ", ".join(str(v) for v in values)
        return f"__host__ __device__ constexpr int {name}(int i) {{ constexpr int t[] = {{{body}}}; return t[i]; }}"

    bits = 0
    for m in facts.row_masks:
        bits |= m
    lines = [
        "#define PORTATTN_WMMA_ORDER 1",
        "namespace portattn_sm70::wmma_order {  // checked by the host on this GPU (cuda_volta/wmma_order.py)",
        "constexpr bool REGISTER_SOFTMAX = true;",
        f"constexpr int GROUPS = {len(facts.group_slot)}, ROW_MASK_COUNT = {max(len(facts.row_masks), 1)}, "
        f"ROW_LANE_BITS = {bits};",
        table("group_of", facts.group_of),
        table("group_slot", facts.group_slot),
        table("row_mask", facts.row_masks or (0,)),
        table("a_slot", facts.a_slot),
        table("a_xor", facts.a_xor),
        "}  // namespace portattn_sm70::wmma_order",
    ]
    return "\n".join(lines) + "\n"


def mma_order() -> WmmaOrder:
    """The order of ``mma.m16n8k16`` (PTX ISA, two n-halves side by side; A's 8 registers hold its
    4 twice), which WMMA m16n16k16 may lower to on sm80+: an example order that allows the register
    softmax, for tests and the emulator. Only ever assumed after a probe confirms it."""
    c, a = [], []
    for lane in range(32):
        g, t = lane // 4, lane % 4
        c.append(tuple((g + 8 * ((i // 2) % 2)) * 16 + 2 * t + i % 2 + 8 * (i // 4) for i in range(8)))
        pairs = [(g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)]
        elems = [r * 16 + col + e for r, col in pairs for e in (0, 1)]
        a.append(tuple(elems + elems))
    return WmmaOrder(tuple(c), tuple(a))
