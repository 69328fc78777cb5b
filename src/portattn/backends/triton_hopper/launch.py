"""Host side of ``triton_hopper``: picks configs and the TMA or pointer path, launches the kernels.

Imported only when the backend first runs (it imports triton).
"""

from __future__ import annotations

import functools
import math
import os
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from portattn import _alloc
from portattn._device import cuda_capability
from portattn.backends.triton_hopper import POINTER_PATH_HEAD_DIM_V, configs, direct, kernels, quant

if TYPE_CHECKING:
    from portattn._call import AttentionCall

DQ_ENV = "PORTATTN_TRITON_DQ"  # "atomic": dQ by atomics inside the dK/dV kernel (not deterministic)
TMA_ENV = "PORTATTN_TRITON_TMA"  # "0" pointer path, "1" in-kernel descriptors, "host" host descriptors (default)
GLUON_ENV = "PORTATTN_TRITON_GLUON"  # "0": the sm90 forward runs the Triton kernel, not the Gluon one


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def _scratch(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    return torch.empty(size, dtype=torch.int8, device="cpu" if interpreting() else "cuda")


def _ensure_allocator() -> None:
    """Device-side tensor descriptors need scratch memory from a Triton allocator. Triton keeps it
    in a ContextVar, and autograd runs the backward on another thread: set it at every launch."""
    triton.set_allocator(_scratch)


def _capability(t: torch.Tensor) -> tuple[int, int] | None:
    return None if interpreting() or t.device.type != "cuda" else cuda_capability(t.device)


POINTER, DEVICE_TMA, HOST_TMA = 0, 1, 2  # the kernels' TILES modes
_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def _tma_ok(capability: tuple[int, int] | None, *tensors: torch.Tensor) -> bool:
    """TMA needs sm90+, a contiguous last dim, 16-byte aligned bases and strides, and no empty dim."""
    if capability is None:
        return True  # the interpreter has no such limits
    return capability >= (9, 0) and _tma_aligned(*tensors)


def _tma_aligned(*tensors: torch.Tensor) -> bool:
    return all(t.numel() > 0 and _alloc.rows_16b_aligned(t) for t in tensors)


def _tiles(capability: tuple[int, int] | None, prefer_tma: bool, *tensors: torch.Tensor) -> int:
    """The tile mode of one launch. ``PORTATTN_TRITON_TMA``: ``0`` pointer, ``1`` in-kernel descriptors,
    ``host`` host-made descriptors; unset, host-made descriptors where the config asks for TMA and the
    strides allow (on an H100 they beat in-kernel ones by up to 1.4x at short sequences: no per-program
    descriptor set-up). The interpreter runs the pointer path unless the variable asks for another."""
    forced = os.environ.get(TMA_ENV, "")
    if capability is None:
        return {"1": DEVICE_TMA, "host": HOST_TMA}.get(forced, POINTER)
    if forced == "0" or not (prefer_tma or forced in ("1", "host")) or not _tma_ok(capability, *tensors):
        return POINTER
    return DEVICE_TMA if forced == "1" else HOST_TMA


def _operands(tiles: int, *specs: tuple[torch.Tensor, int, int]) -> list | tuple:
    """Each ``(tensor, block rows, head dim)`` as the kernel takes it in this mode: the tensor, or a host
    descriptor over its ``(batch, seqlen, heads, dim)`` with a ``(1, rows, 1, padded dim)`` block."""
    return _bind(tiles, _operand_templates(tiles, *specs), *(t for t, _, _ in specs))


def _operand_templates(tiles: int, *specs: tuple[torch.Tensor, int, int]) -> list | None:
    """``_operands``' descriptor templates, which a per-signature plan can keep (None: the mode takes
    the tensors themselves)."""
    return [_descriptor_template(t, rows, dim) for t, rows, dim in specs] if tiles == HOST_TMA else None


def _bind(tiles: int, templates: list | None, *tensors: torch.Tensor) -> list | tuple:
    """``_operands`` from the templates: each tensor, or its template copied onto its base."""
    if tiles == DEVICE_TMA:
        _ensure_allocator()
    if templates is None:
        return tensors
    return [direct.rebased(d, t) for d, t in zip(templates, tensors, strict=True)]


_CACHE_LIMIT = 4096  # entries in each per-signature cache (descriptor templates, plans)
_descriptor_templates: dict[tuple, object] = {}


def _descriptor_template(t: torch.Tensor, rows: int, dim: int):
    """The host descriptor over ``t``'s shape and strides without a base: made and validated once per
    (shape, strides, dtype, block); a call copies it onto its tensor (``direct.rebased``)."""
    key = (t.shape, t.stride(), t.dtype, rows, dim)
    template = _descriptor_templates.get(key)
    if template is None:
        from triton.tools.tensor_descriptor import TensorDescriptor

        template = TensorDescriptor(t, list(t.shape), list(t.stride()), [1, rows, 1, _block_d(dim)])
        template.base = None  # a template must not keep the first call's tensor alive
        if len(_descriptor_templates) >= _CACHE_LIMIT:
            _descriptor_templates.clear()
        _descriptor_templates[key] = template
    return template


def _aligned_bases(*tensors: torch.Tensor) -> tuple[bool, ...]:
    """16-byte alignment of each base: Triton specializes pointer arguments on it, TMA requires it."""
    return tuple(t.data_ptr() % 16 == 0 for t in tensors)


def _needs_tma(call: AttentionCall, cap: tuple[int, int] | None) -> bool:
    """head_dim_v != head_dim must take the descriptor path on a GPU (see POINTER_PATH_HEAD_DIM_V)."""
    return cap is not None and call.head_dim != call.head_dim_v


def _atomic_dq() -> bool:
    """dQ by atomics (``PORTATTN_TRITON_DQ=atomic``), unless torch asks for deterministic algorithms.
    Off by default: on an H100 it was slower than the separate dQ kernel at every measured point."""
    return os.environ.get(DQ_ENV, "") == "atomic" and not torch.are_deterministic_algorithms_enabled()


def _block_d(dim: int) -> int:
    return max(16, 1 << (dim - 1).bit_length())  # triton.next_power_of_2 costs microseconds per call


def _common(call: AttentionCall) -> dict:
    lo, hi = call.band
    softcap = call.softcap if call.softcap is not None else 1.0
    return {
        "band_lo": lo if lo is not None else 0,
        "band_hi": hi if hi is not None else 0,
        "qk_scale": call.scale * kernels.LOG2E,
        "softcap": softcap * kernels.LOG2E,
        "GROUP": call.group_size,
        "BLOCK_D": _block_d(call.head_dim),
        "BLOCK_DV": _block_d(call.head_dim_v),
        "HAS_LO": lo is not None,
        "HAS_HI": hi is not None,
        "HAS_SOFTCAP": call.softcap is not None,
        "DOT_PRECISION": "ieee" if call.dtype == torch.float32 else "tf32",
        "UPCAST": interpreting() and call.dtype == torch.bfloat16,
    }


def _bsh(t: torch.Tensor) -> tuple[int, int, int]:
    """Strides of (batch, seqlen, heads) for a ``(batch, seqlen, heads, dim)`` tensor."""
    return t.stride(0), t.stride(1), t.stride(2)


def _lastdim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _contiguous(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous()


@functools.cache
def _gluon_import_error() -> str | None:
    """Why the Gluon kernel cannot be imported (an old Triton without Gluon, or one whose Gluon API
    moved), or None; tried once per process."""
    try:
        from portattn.backends.triton_hopper import gluon_fwd  # noqa: F401
    except Exception as exc:
        return f"the Gluon forward failed to import: {exc!r}"
    return None


def gluon_forward_reason(call: AttentionCall, cap: tuple[int, int] | None, *tensors: torch.Tensor) -> str | None:
    """Why this forward does not run the Gluon kernel (``gluon_fwd.py``), or None when it does."""
    if os.environ.get(GLUON_ENV, "") == "0":
        return f"{GLUON_ENV}=0"
    if cap is None or cap[0] != 9:
        return "the Gluon forward needs sm90 (wgmma)"
    if call.dtype not in (torch.float16, torch.bfloat16) or call.precision is not None:
        return "the Gluon forward serves fp16 and bf16"
    if call.head_dim != call.head_dim_v or call.head_dim not in (64, 128):
        return "the Gluon forward serves head_dim == head_dim_v in (64, 128)"
    if call.softcap is not None or call.band[0] is not None:
        return "the Gluon forward serves full and causal-type bands without softcap"
    if call.sparsity is not None:
        return "the Gluon forward serves no sparsity pattern (the Triton kernel skips its blocks)"
    if call.seqlen_k == 0 or not _tma_aligned(*tensors):
        return "the Gluon forward needs TMA-describable inputs"
    return _gluon_import_error()


def gluon_fp8_reason(call: AttentionCall, cap: tuple[int, int] | None) -> str | None:
    """Why a ``precision="fp8"`` forward does not run the Gluon kernel, or None when it does (then the
    prepass tiles for it; its outputs are padded, 16-byte aligned)."""
    if os.environ.get(GLUON_ENV, "") == "0":
        return f"{GLUON_ENV}=0"
    if cap is None or cap[0] != 9:
        return "the Gluon forward needs sm90 (wgmma)"
    if call.head_dim != call.head_dim_v or call.head_dim not in (64, 128, 256):
        return "the Gluon FP8 forward serves head_dim == head_dim_v in (64, 128, 256)"
    if call.softcap is not None or call.band[0] is not None:
        return "the Gluon forward serves full and causal-type bands without softcap"
    return _gluon_import_error()


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.cache
def _nvmma_layout(rows: int, dim: int, dtype: torch.dtype):
    """The shared-memory layout of a ``(1, rows, 1, dim)`` TMA block (made once: a call's host time counts)."""
    from triton.experimental.gluon import language as gl

    element = {torch.float16: gl.float16, torch.float8_e4m3fn: gl.float8e4nv}.get(dtype, gl.bfloat16)
    return gl.NVMMASharedLayout.get_default_for([1, rows, 1, dim], element)


_gluon_plans: dict[tuple, tuple] = {}


def _gluon_key(call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple:
    return (call, q.stride(), k.stride(), v.stride(), q.shape[1], k.shape[1])  # FP8's tiles are padded


def _gluon_serves(call: AttentionCall, cap: tuple[int, int] | None, q, k, v, out: torch.Tensor) -> bool:
    """``gluon_forward_reason(...) is None``, answered from the plans for a signature already served
    (then only the bases' alignment can differ; ``out`` is a fresh allocation)."""
    if _gluon_key(call, q, k, v) in _gluon_plans and os.environ.get(GLUON_ENV, "") != "0":
        return all(_aligned_bases(q, k, v))
    return gluon_forward_reason(call, cap, q, k, v, out) is None


def _forward_gluon(call: AttentionCall, q, k, v, out: torch.Tensor, lse: torch.Tensor,
                   scales: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:  # fmt: skip
    """The Gluon forward; with ``scales`` ``(qs, ks, vs)`` on the FP8 prepass's tiles (V transposed)."""
    from portattn.backends.triton_hopper import gluon_fwd

    fp8 = scales is not None
    cfg = configs.pick_ws(call.head_dim, call.band[1] is not None, call.seqlen_k, fp8)
    key = _gluon_key(call, q, k, v)
    plan = _gluon_plans.get(key)
    if plan is None or plan[0] != cfg:
        capturing = torch.cuda.is_current_stream_capturing()
        plan = _gluon_plan(call, cfg, q, k, v, out, scales, schedule=not capturing)
        if not capturing:  # a plan made while capturing has no tile list: the next call makes a full one
            if len(_gluon_plans) >= _CACHE_LIMIT:
                _gluon_plans.clear()
            _gluon_plans[key] = plan
    descriptors = [direct.rebased(d, t) for d, t in zip(plan[1], (q, k, v, out), strict=True)]
    args, constants = _gluon_arguments(plan, descriptors, lse, scales)
    direct.launch(gluon_fwd.attn_fwd_ws, plan[2], (key, cfg, plan[5] is not None), *args, **constants)


def _gluon_arguments(plan: tuple, descriptors: list, lse: torch.Tensor,
                     scales: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> tuple[tuple, dict]:  # fmt: skip
    """The Gluon kernel's arguments for a plan (``_gluon_plan``): the runtime ones in parameter order,
    and the constants. ``lse`` stands in for the pointers a launch does not use."""
    _, _, _, scalars, constants, schedule = plan
    scale_ptrs = scales if scales is not None else (lse, lse, lse)
    args = (*descriptors, lse, *scale_ptrs, lse if schedule is None else schedule, *scalars)
    return args, {**constants, "SCHEDULE": schedule is not None}


# the heads whose K and V a scheduled walk keeps in L2 at once: it deals out their tiles before the next ones
_SCHEDULE_L2_BYTES = 16 << 20
# a tile's fixed cost (Q, the first and last GEMMs, the output) in key blocks, measured on an H100 at d=64:
# 2.1 us per round for 1-block tiles against 1.2 us per further block (RESULTS.md, issue 3)
_SCHEDULE_TILE_COST = 0.7
# once per call signature, the host's dealing took 0.5-0.8 us per tile on the CI-like 2-core VM (3 ms at
# 4096 tiles, 35 ms at 65536); longer lists take the snake walk
_SCHEDULE_MAX_TILES = 1 << 16


def _tile_schedule(call: AttentionCall, cfg: configs.WsConfig, n_m_tiles: int, programs: int,
                   device: torch.device) -> torch.Tensor:  # fmt: skip
    """The tile list of a scheduled walk (``WsConfig.scheduled``), int32: ``programs + 1`` offsets, then
    each program's tiles in order. Heads are taken in groups whose K and V fit ``_SCHEDULE_L2_BYTES``;
    a group's tiles go out heaviest first, each to the program with the least work so far (longest
    processing time first), so that the programs of a causal-type band finish together."""
    import heapq

    tile, hi = cfg.consumers * cfg.block_m, call.band[1]
    work = []  # per place j in a head's walk, which takes the last query tiles (the heaviest) first
    for j in range(n_m_tiles):
        m0 = (n_m_tiles - 1 - j) * tile
        last_row0 = m0 + cfg.block_m * min(cfg.consumers - 1, (call.seqlen_q - 1 - m0) // cfg.block_m)
        last = min(last_row0 + cfg.block_m + hi, call.seqlen_k)
        work.append(triton.cdiv(max(last, 0), cfg.block_n) + _SCHEDULE_TILE_COST)
    order = sorted(range(n_m_tiles), key=lambda j: -work[j])
    heads = call.batch * call.heads_q
    head_bytes = 2 * call.seqlen_k * call.head_dim * 2 // call.group_size  # K and V, shared in a GQA group
    group = max(1, _SCHEDULE_L2_BYTES // max(head_bytes, 1))
    loads = [(0.0, p) for p in range(programs)]
    lists: list[list[int]] = [[] for _ in range(programs)]
    for first in range(0, heads, group):
        for j in order:
            for bh in range(first, min(first + group, heads)):
                load, p = heapq.heappop(loads)
                lists[p].append(bh * n_m_tiles + j)
                heapq.heappush(loads, (load + work[j], p))
    offsets = [0]
    for tiles in lists:
        offsets.append(offsets[-1] + len(tiles))
    flat = [t for tiles in lists for t in tiles]
    return torch.tensor(offsets + flat, dtype=torch.int32).to(device)


def _gluon_plan(call: AttentionCall, cfg: configs.WsConfig, q, k, v, out: torch.Tensor, scales,
                schedule: bool = True) -> tuple:  # fmt: skip
    """What the Gluon forward's launch needs for one call signature: descriptor templates (validated
    here once, without a base), the grid, the runtime scalars, the constants and the tile list of a
    scheduled walk (None: the snake walk; ``schedule=False`` makes none)."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    d, hi = call.head_dim, call.band[1]
    fp8 = scales is not None
    templates = []
    # FP8's V is (batch, dim, heads, keys): its block is (1, dim, 1, keys)
    v_block = (d, cfg.block_n) if fp8 else (cfg.block_n, d)
    for t, (rows, cols) in ((q, (cfg.block_m, d)), (k, (cfg.block_n, d)), (v, v_block), (out, (cfg.block_m, d))):
        layout = _nvmma_layout(rows, cols, t.dtype)
        desc = TensorDescriptor(t, list(t.shape), list(t.stride()), [1, rows, 1, cols], layout)
        desc.base = None  # a template must not keep the first call's tensor alive
        templates.append(desc)
    n_m_tiles = triton.cdiv(call.seqlen_q, cfg.consumers * cfg.block_m)
    n_tiles = n_m_tiles * call.batch * call.heads_q
    programs = min(n_tiles, _sm_count(q.device)) if cfg.persistent else n_tiles
    q_blocks, kv_blocks = (scales[0].shape[2], scales[1].shape[2]) if fp8 else (0, 0)
    scalars = (call.seqlen_q, call.seqlen_k, call.heads_q, hi if hi is not None else 0, call.scale * kernels.LOG2E,
               n_m_tiles, n_tiles, q_blocks, kv_blocks)  # fmt: skip
    constants = dict(
        GROUP=call.group_size, STAGES=cfg.stages, HAS_HI=hi is not None, PINGPONG=cfg.pingpong,
        CONSUMERS=cfg.consumers, CONSUMER_REGS=cfg.consumer_regs, OVERLAP=cfg.overlap,
        PERMUTE_V=fp8 and cfg.permute_v, num_warps=4,
    )  # fmt: skip
    tiles = None
    if schedule and cfg.scheduled and cfg.persistent and hi is not None and n_tiles <= _SCHEDULE_MAX_TILES:
        tiles = _tile_schedule(call, cfg, n_m_tiles, programs, q.device)
    return cfg, templates, (programs,), scalars, constants, tiles


def forward(
    call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (batch, seqlen_q, heads_q, head_dim_v)``, ``lse`` float32 ``(batch, heads_q, seqlen_q)``."""
    cap = _capability(q)
    prepare = _contiguous if _needs_tma(call, cap) else _lastdim_contiguous
    q, k, v = (prepare(t) for t in (q, k, v))
    b, sq, hq = call.batch, call.seqlen_q, call.heads_q
    out, lse = _alloc.attention_outputs(call, q.dtype, q.device)
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    if _gluon_serves(call, cap, q, k, v, out):
        _forward_gluon(call, q, k, v, out, lse)
        return out, lse
    cfg = configs.pick("fwd", max(call.head_dim, call.head_dim_v), cap, causal=call.band[1] is not None,
                       fp32=call.dtype == torch.float32, loop_len=call.seqlen_k,
                       pattern_block=_pattern_block(call))  # fmt: skip
    sparse, intervals, lists = {}, (lse, lse, lse, lse), (lse, lse, lse, lse, lse)
    if _is_interval(call):
        sparse = dict(INTERVAL=True)
        intervals = _interval_operands(call, _interval_spans(call.sparsity, cfg.block_m, cfg.block_n))
    elif _pattern_block(call):
        sparse = dict(SPARSE=True, PATTERN_BLOCK=call.sparsity.block)
        lists = _pattern_walk(call, "q", cfg.block_m, cfg.block_n, q.device)
    needs_tma = _needs_tma(call, cap)
    tiles = _tiles(cap, cfg.tma or needs_tma, q, k, v, out) if call.seqlen_k > 0 else POINTER
    if needs_tma and call.seqlen_k > 0 and tiles == POINTER:
        raise RuntimeError(f"triton_hopper: {POINTER_PATH_HEAD_DIM_V}; inputs not TMA-compatible after a copy")
    d, dv, bm, bn = call.head_dim, call.head_dim_v, cfg.block_m, cfg.block_n
    operands = _operands(tiles, (q, bm, d), (k, bn, d), (v, bn, dv), (out, bm, dv))
    grid = (triton.cdiv(sq, cfg.block_m), b * hq)
    key = (call, cfg, tiles, q.stride(), k.stride(), v.stride(), _aligned_bases(q, k, v, out, lse))
    direct.launch(
        kernels.attn_fwd, grid, key, *operands, lse, lse, lse, lse, *lists, *intervals, *_bsh(q), *_bsh(k), *_bsh(v),
        *_bsh(out), sq, call.seqlen_k, hq, call.head_dim, call.head_dim_v,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, WRITE_LSE=True, TILES=tiles, FP8=False, P_SHIFT=0.0,
        OUT_DTYPE=_TL_DTYPES[q.dtype], num_warps=cfg.num_warps, num_stages=cfg.num_stages, **_common(call), **sparse,
    )  # fmt: skip
    return out, lse


_pattern_tiles_cache: dict[tuple, tuple] = {}
_INT32_MAX = 2**31 - 1


def _is_interval(call: AttentionCall) -> bool:
    return call.sparsity is not None and call.sparsity.kind == "interval"


def _pattern_block(call: AttentionCall) -> int:
    """The block of the call's block-sparse pattern, walked through its lists (``_pattern_walk``); 0 if none."""
    return call.sparsity.block if call.sparsity is not None and not _is_interval(call) else 0


def _interval_operands(call: AttentionCall, spans: torch.Tensor) -> tuple[torch.Tensor, ...]:
    mask = call.sparsity
    return mask.q_lo, mask.q_hi, mask.k_code, spans


def _aligned_spans(start, end, full_start, full_end, block: int) -> torch.Tensor:
    """``(first, full_first, full_last, last)`` int32 ``(..., 4)`` as the kernels' three-part loops take
    them: ``first`` rounded down to a block, the unmasked middle whole blocks inside ``[full_start,
    full_end)``, ``last`` exact."""
    end = torch.maximum(end, start)
    first = torch.div(start, block, rounding_mode="floor") * block
    full_first = torch.minimum(torch.maximum(-torch.div(-full_start, block, rounding_mode="floor") * block, first), end)
    full_last = full_first + torch.div((torch.minimum(full_end, end) - full_first).clamp_min(0), block,
                                       rounding_mode="floor") * block  # fmt: skip
    return torch.stack((first, full_first, full_last, end), dim=-1).to(torch.int32).contiguous()


def _interval_spans(mask, block_m: int, block_n: int) -> torch.Tensor:
    """Per (batch*heads_q, query block of ``block_m``), the keys an ``IntervalMask`` lets it see, as
    ``_aligned_spans``: from the first key any row sees to the last, and unmasked where every row of
    the block sees every key (codes increase along the keys, bounds along the rows: searches)."""
    lo, hi = mask.q_lo, mask.q_hi
    b, hq, sq = lo.shape
    code = mask.k_code.repeat_interleave(hq // mask.k_code.shape[1], dim=1).contiguous()
    blocks = triton.cdiv(sq, block_m)
    pad = blocks * block_m - sq
    lo_b = torch.nn.functional.pad(lo, (0, pad), value=_INT32_MAX).view(b, hq, blocks, block_m)
    hi_b = torch.nn.functional.pad(hi, (0, pad), value=-1).view(b, hq, blocks, block_m)
    real = (torch.arange(blocks * block_m, device=lo.device) < sq).view(blocks, block_m)
    seen = lo_b <= hi_b
    lo_min = torch.where(seen, lo_b, _INT32_MAX).amin(-1)
    hi_max = torch.where(seen, hi_b, -1).amax(-1)
    lo_max = torch.where(real, lo_b, -1).amax(-1)
    hi_min = torch.where(real, hi_b, _INT32_MAX).amin(-1)
    start = torch.searchsorted(code, lo_min)
    end = torch.where(lo_min <= hi_max, torch.searchsorted(code, hi_max, right=True), start)
    full_start = torch.searchsorted(code, lo_max)
    full_end = torch.searchsorted(code, hi_min, right=True)
    return _aligned_spans(start, end, full_start, full_end, block_n).view(b * hq * blocks, 4)


def _interval_row_spans(mask, block_m: int, block_n: int) -> torch.Tensor:
    """Per (batch*heads_q, key block of ``block_n``), the query rows that see it, for the dK/dV walk:
    rows whose ``hi`` reaches the block's smallest code and whose ``lo`` the largest; unmasked where
    every row sees every key (a block holding padded keys, code INT32_MAX, never is)."""
    lo, hi = mask.q_lo, mask.q_hi
    b, hq, _ = lo.shape
    sk = mask.k_code.shape[2]
    blocks = triton.cdiv(sk, block_n)
    code = torch.nn.functional.pad(mask.k_code, (0, blocks * block_n - sk), value=_INT32_MAX)
    code = code.view(*mask.k_code.shape[:2], blocks, block_n).repeat_interleave(hq // mask.k_code.shape[1], dim=1)
    code_min, code_max = code.amin(-1).contiguous(), code.amax(-1).contiguous()
    start = torch.searchsorted(hi, code_min)
    end = torch.searchsorted(lo, code_max, right=True)
    full_start = torch.searchsorted(hi, code_max)
    full_end = torch.searchsorted(lo, code_min, right=True)
    return _aligned_spans(start, end, full_start, full_end, block_m).view(b * hq * blocks, 4)


def _pattern_tiles(call: AttentionCall, device: torch.device) -> tuple:
    """A block pattern's ``BlockLists`` (on the host), the number of each partial tile, int32 ``(query
    blocks, key blocks)`` (-1 for full and empty ones), and the partial tiles' element masks on the
    device, uint8 ``(partial tiles, block, block)`` (zero past the lengths). Cached per pattern and lengths."""
    pattern, sq, sk = call.sparsity, call.seqlen_q, call.seqlen_k
    key = (pattern.cache_key, sq, sk, device)
    hit = _pattern_tiles_cache.get(key)
    if hit is not None:
        return hit
    lists = pattern.block_lists(sq, sk)
    block = lists.block
    partial = (lists.kv_index >= 0) & ~lists.kv_full
    number = torch.full((lists.kv_count.numel(), lists.q_count.numel()), -1, dtype=torch.int32)
    masks = torch.zeros(max(int(partial.sum()), 1), block, block, dtype=torch.uint8)
    for i, (m, t) in enumerate(partial.nonzero().tolist()):
        n = int(lists.kv_index[m, t])
        number[m, n] = i
        q0, k0 = m * block, n * block
        q1, k1 = min(q0 + block, sq), min(k0 + block, sk)
        tile = pattern.tile_mask(call.batch, call.heads_q, sq, sk, (q0, q1), (k0, k1), torch.device("cpu"))
        masks[i, : q1 - q0, : k1 - k0] = 1 if tile is None else tile[0, 0].to(torch.uint8)
    if len(_pattern_tiles_cache) >= _CACHE_LIMIT:
        _pattern_tiles_cache.clear()
    _pattern_tiles_cache[key] = (lists, number, masks.to(device))
    return _pattern_tiles_cache[key]


_walk_cache: dict[tuple, tuple] = {}


def _pattern_walk(call: AttentionCall, axis: str, block: int, other_block: int, device: torch.device) -> tuple:
    """A block pattern's walk as the kernels take it: ``(WALK, TILE_START, TILE_MASK, MASKS, ORDER)``.

    Programs are blocks of ``block`` queries (``axis`` "q": the forward's and dQ's) or keys ("k": dK/dV's);
    each visits the tiles of ``other_block`` keys (or queries) of its pattern block's visible tiles that
    meet the call's band. ``WALK`` int32 ``(programs, 3)``: (first entry, tiles that need a mask, tiles
    that do not); ``TILE_START`` int32: each tile's first key (or query), a program's masked tiles
    first, in increasing order; ``TILE_MASK`` int32: its partial pattern tile's number in ``MASKS``, -1
    where only the band or the length masks it; ``ORDER``: the programs by tiles visited, most first,
    ties in place (``kernels._heaviest_first`` launches them in that order). Cached per call signature."""
    key = (call.sparsity.cache_key, call.seqlen_q, call.seqlen_k, call.band, axis, block, other_block, device)
    hit = _walk_cache.get(key)
    if hit is not None:
        return hit
    lists, number, masks = _pattern_tiles(call, device)
    lo, hi = call.band  # lo <= key - query <= hi
    if axis == "q":
        index, length, other = lists.kv_index, call.seqlen_q, call.seqlen_k
    else:  # the rows that see keys c: c - hi <= row <= c - lo
        index, length, other, number = lists.q_index, call.seqlen_k, call.seqlen_q, number.t()
        lo, hi = (None if hi is None else -hi), (None if lo is None else -lo)
    start = torch.arange(0, length, block)
    end = torch.clamp(start + block, max=length)
    first = torch.zeros_like(start) if lo is None else (start + lo).clamp_min(0)
    last = torch.full_like(start, other) if hi is None else torch.clamp(end + hi, max=other)
    # the band needs no mask on tiles inside [full_lo, full_hi): every row sees every key there
    full_lo = torch.zeros_like(start) if lo is None else end - 1 + lo
    full_hi = last if hi is None else torch.minimum(start + hi + 1, last)
    blocks = start // lists.block
    entries = index[blocks].long()  # (programs, width), -1 past the list
    tile_no = torch.where(entries >= 0, number[blocks[:, None], entries.clamp_min(0)], -1)
    subs = torch.arange(0, lists.block, other_block)
    tile0 = (entries[:, :, None] * lists.block + subs).flatten(1)  # (programs, width * subs)
    tile_no = tile_no[:, :, None].expand(-1, -1, len(subs)).flatten(1)
    taken = (entries >= 0)[:, :, None].expand(-1, -1, len(subs)).flatten(1)
    visible = taken & (tile0 + other_block > first[:, None]) & (tile0 < last[:, None])
    plain = (tile_no < 0) & (tile0 >= full_lo[:, None]) & (tile0 + other_block <= full_hi[:, None])
    kind = torch.where(visible, torch.where(plain, 1, 0), 2)  # masked, unmasked, not visited
    kind, perm = torch.sort(kind, dim=1, stable=True)
    n_masked, n_plain = (kind == 0).sum(1), (kind == 1).sum(1)
    counts = n_masked + n_plain
    walk = torch.stack((torch.cumsum(counts, 0) - counts, n_masked, n_plain), dim=1)
    keep = kind < 2
    tile_start = torch.gather(tile0, 1, perm)[keep]
    tile_mask = torch.gather(tile_no, 1, perm)[keep]
    if tile_start.numel() == 0:  # nothing visited: the kernels still take a pointer
        tile_start, tile_mask = torch.zeros(1, dtype=torch.long), torch.full((1,), -1)
    order = torch.sort(-counts, stable=True).indices
    out = (*(t.to(torch.int32).contiguous().to(device) for t in (walk, tile_start, tile_mask)), masks,
           order.to(torch.int32).to(device))  # fmt: skip
    if len(_walk_cache) >= _CACHE_LIMIT:
        _walk_cache.clear()
    _walk_cache[key] = out
    return out


def _quantize_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_q: int, block_kv: int, rotation: torch.Tensor | None,
    num_warps: int = 4, permute_keys: bool = False,
) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """The FP8 prepass, one launch: ``(q8, qs, k8, ks, v8, vs)``. Q and K ``(batch, seqlen, heads, dim)``
    are rotated by ``rotation`` (``quant.signed_hadamard`` in their dtype; None: not rotated) into e4m3
    ``(batch, seqlen_pad, heads, dim_pad)``; V becomes ``(batch, dim_v_pad, heads, seqlen_k_pad)``. Each
    seqlen is padded with zeros to a multiple of its tile (``block_q`` for Q, ``block_kv`` for K and V),
    and each tile of each head has one float32 scale: ``(batch, heads, seqlen_pad / block)``.
    ``permute_keys``: V^T's keys in ``quant.p_operand_key_order`` (the Gluon forward's ``permute_v``)."""
    if permute_keys and block_kv % 32:
        raise ValueError(f"permute_keys needs key tiles of a multiple of 32, got block_kv={block_kv}")
    b, sq, hq, d = q.shape
    sk, hk, dv = k.shape[1], k.shape[2], v.shape[3]
    dp, dvp = _block_d(d), _block_d(dv)
    q_blocks, kv_blocks = triton.cdiv(sq, block_q), triton.cdiv(sk, block_kv)
    e4m3 = torch.float8_e4m3fn
    q8 = torch.empty(b, q_blocks * block_q, hq, dp, dtype=e4m3, device=q.device)
    k8 = torch.empty(b, kv_blocks * block_kv, hk, dp, dtype=e4m3, device=q.device)
    v8 = torch.empty(b, dvp, hk, kv_blocks * block_kv, dtype=e4m3, device=q.device)
    qs = torch.empty(b, hq, q_blocks, dtype=torch.float32, device=q.device)
    ks = torch.empty(b, hk, kv_blocks, dtype=torch.float32, device=q.device)
    vs = torch.empty(b, hk, kv_blocks, dtype=torch.float32, device=q.device)
    q, k, v = (_lastdim_contiguous(t) for t in (q, k, v))
    # every value Triton specializes on: the outputs' layouts follow from these
    key = (q.shape, k.shape, v.shape, q.dtype, q.stride(), k.stride(), v.stride(), block_q, block_kv,
           rotation is not None, num_warps, permute_keys, _aligned_bases(q, k, v, q8, k8, v8, qs, ks, vs))  # fmt: skip
    direct.launch(
        kernels.quantize_qkv, (max(q_blocks, kv_blocks), b * hq, 3), key,
        q, k, v, q8, k8, v8, qs, ks, vs, rotation if rotation is not None else qs, *_bsh(q), *_bsh(k), *_bsh(v),
        q8.stride(0), q8.stride(1), q8.stride(2), k8.stride(0), k8.stride(1), k8.stride(2),
        v8.stride(0), v8.stride(1), v8.stride(2), sq, sk, hq, hk, d, dv, 1.0 / math.sqrt(dp),
        BLOCK_Q=block_q, BLOCK_KV=block_kv, BLOCK_D=dp, BLOCK_DV=dvp, ROTATE=rotation is not None,
        UPCAST=interpreting(), PERMUTE_KEYS=permute_keys, num_warps=num_warps,
    )  # fmt: skip
    return q8, qs, k8, ks, v8, vs


def _quantize_per_tensor(
    x: torch.Tensor, block: int, dim_pad: int, transpose: bool, permute_keys: bool = False
) -> tuple[torch.Tensor, ...]:
    """The accuracy baseline: one scale for the whole tensor (no rotation), laid out as ``_quantize_qkv``'s."""
    values, scale = quant.quantize_tensor(x)
    descale = scale.to(x.device).expand(x.shape[0], x.shape[2])
    return _pad_prequantized(values.to(x.device), descale, block, dim_pad, transpose, 1, permute_keys)


def _block_scales(descale: torch.Tensor, group: int, blocks: int) -> torch.Tensor:
    """FA3's descale ``(batch, heads_kv)`` as the kernel's per-block scales ``(batch, heads, blocks)``
    (``group`` query heads share a key/value head's descale)."""
    per_head = descale.repeat_interleave(group, dim=1)
    return per_head[:, :, None].expand(*per_head.shape, blocks).contiguous()


def _pad_prequantized(
    x: torch.Tensor, descale: torch.Tensor, block: int, dim_pad: int, transpose: bool, group: int,
    permute_keys: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Caller-quantized float8 ``x`` ``(batch, seqlen, heads, dim)`` with its FA3 descale ``(batch,
    heads_kv)`` in ``_quantize_qkv``'s layout: zero-padded values and per-block scales (``permute_keys``
    with ``transpose``: the keys in ``quant.p_operand_key_order``)."""
    b, s, h, d = x.shape
    blocks = triton.cdiv(s, block)
    padded = torch.zeros(b, blocks * block, h, dim_pad, dtype=x.dtype, device=x.device)
    padded[:, :s, :, :d] = x
    if transpose:
        padded = padded.permute(0, 3, 2, 1)
        if permute_keys:
            padded = padded[..., quant.p_operand_key_order(padded.shape[-1], x.device)]
        padded = padded.contiguous()
    return padded, _block_scales(descale, group, blocks)


def _fp8_config(call: AttentionCall, cap: tuple[int, int] | None, gluon: bool):
    causal = call.band[1] is not None
    if gluon:
        return configs.pick_ws(call.head_dim, causal, call.seqlen_k, fp8=True)
    return configs.pick("fwd8", max(call.head_dim, call.head_dim_v), cap, causal=causal, loop_len=call.seqlen_k)


def fp8_blocks(call: AttentionCall, cap: tuple[int, int] | None) -> tuple[int, int]:
    """``(query rows, keys)`` per FP8 scale in a ``precision="fp8"`` forward of ``call`` (the prepass's tiles)."""
    cfg = _fp8_config(call, cap, gluon_fp8_reason(call, cap) is None)
    return cfg.block_m, cfg.block_n


def forward_fp8(
    call: AttentionCall, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, rotate: bool = True,
    per_tensor: bool = False, p_shift: float = 8.0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``precision="fp8"``: the prepass (rotation of Q and K, block scales, e4m3; V transposed), then the
    forward kernel on e4m3 tiles, P cast at ``2**p_shift`` times its value. ``rotate=False``,
    ``per_tensor=True`` and ``p_shift=0`` give the accuracy benchmark's baselines. Float8 inputs with
    ``call.descale`` skip the prepass (no rotation: the caller quantized) and give a bfloat16 output.
    On sm90 at head dims 64, 128 and 256 the Gluon forward runs the tiles (``gluon_fp8_reason``); else,
    and for ``p_shift != 8``, the Triton kernel."""
    cap = _capability(q)
    b, sq, hq = call.batch, call.seqlen_q, call.heads_q
    prequantized = call.descale is not None
    out_dtype = torch.bfloat16 if prequantized else q.dtype
    out, lse = _alloc.attention_outputs(call, out_dtype, q.device)
    if out.numel() == 0 or call.seqlen_k == 0:
        return out.zero_(), lse.fill_(float("-inf"))
    gluon = p_shift == 8.0 and gluon_fp8_reason(call, cap) is None
    cfg = _fp8_config(call, cap, gluon)
    bm, bn = cfg.block_m, cfg.block_n
    permute = gluon and cfg.permute_v  # V^T's keys in the order P's registers come in
    dp, dvp = _block_d(call.head_dim), _block_d(call.head_dim_v)
    if prequantized:
        q_descale, k_descale, v_descale = call.descale
        # Q and K are read where they are (masks, or TMA's zero fill, cover the tails); V must be
        # transposed for the FP8 MMA, and strides TMA cannot describe need a padded copy
        q8, k8 = _lastdim_contiguous(q), _lastdim_contiguous(k)
        qs = _block_scales(q_descale, call.group_size, triton.cdiv(sq, bm))
        ks = _block_scales(k_descale, 1, triton.cdiv(call.seqlen_k, bn))
        if not _tma_aligned(q8, k8):  # descriptors cannot take them as they are
            q8, qs = _pad_prequantized(q, q_descale, bm, dp, False, call.group_size)
            k8, ks = _pad_prequantized(k, k_descale, bn, dp, False, 1)
        v8, vs = _pad_prequantized(v, v_descale, bn, dvp, True, 1, permute)
    elif per_tensor:
        q8, qs = _quantize_per_tensor(q, bm, dp, False)
        k8, ks = _quantize_per_tensor(k, bn, dp, False)
        v8, vs = _quantize_per_tensor(v, bn, dvp, True, permute)
    else:
        rotation = quant.signed_hadamard(dp, q.device, q.dtype) if rotate else None
        q8, qs, k8, ks, v8, vs = _quantize_qkv(q, k, v, bm, bn, rotation, permute_keys=permute)
    if gluon:
        _forward_gluon(call, q8, k8, v8, out, lse, (qs, ks, vs))
        return out, lse
    # on a GPU the backend's reasons guarantee sm90 and a TMA-compatible output; the interpreter runs
    # the pointer path unless PORTATTN_TRITON_TMA=host (in-kernel descriptors: no FP8 variant)
    tiles = HOST_TMA if cap is not None else _tiles(cap, True, q8, k8, v8, out)
    tiles = POINTER if tiles == DEVICE_TMA else tiles
    # V is transposed: its (rows, dim) spec is (dim, keys); BLOCK_N is a power of two, so it stays
    operands = _operands(tiles, (q8, bm, dp), (k8, bn, dp), (v8, dvp, bn), (out, bm, call.head_dim_v))
    common = _common(call)
    common.update(BLOCK_D=dp, UPCAST=interpreting(), DOT_PRECISION="tf32")
    kernels.attn_fwd[(triton.cdiv(sq, bm), b * hq)](
        *operands, lse, qs, ks, vs, lse, lse, lse, lse, lse, lse, lse, lse, lse, *_bsh(q8), *_bsh(k8), *_bsh(v8),
        *_bsh(out),
        sq, call.seqlen_k, hq, call.head_dim if prequantized else dp, call.head_dim_v,
        BLOCK_M=bm, BLOCK_N=bn, WRITE_LSE=True, TILES=tiles, FP8=True, OUT_DTYPE=_TL_DTYPES[out_dtype],
        P_SHIFT=p_shift,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common,
    )  # fmt: skip
    return out, lse


def backward(
    call: AttentionCall,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
    dlse: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashAttention-2 backward: a dQ kernel over query blocks that also makes ``delta = rowsum(dO * O)``,
    then a dK/dV kernel over key blocks (with dQ by atomics: a delta pass, then the dK/dV kernel)."""
    cap = _capability(q)
    needs_tma = _needs_tma(call, cap)
    prepare = _contiguous if needs_tma else _lastdim_contiguous
    q, k, v, out, dout = (prepare(t) for t in (q, k, v, out, dout))
    b, sq, sk, hq, hkv = call.batch, call.seqlen_q, call.seqlen_k, call.heads_q, call.heads_kv
    dq = _alloc.empty(b, sq, hq, call.head_dim, dtype=q.dtype, device=q.device)
    dk = _alloc.empty(b, sk, hkv, call.head_dim, dtype=k.dtype, device=k.device)
    dv = _alloc.empty(b, sk, hkv, call.head_dim_v, dtype=v.dtype, device=v.device)
    if sq == 0 or sk == 0 or b == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    lse = lse.contiguous()
    dlse_arg = dlse.float().contiguous() if dlse is not None else None
    pointers = (q, k, v, out, dout, lse) if dlse_arg is None else (q, k, v, out, dout, lse, dlse_arg)
    # everything the plan and the kernels' specialization derive from (the dQ/dK/dV outputs are fresh)
    key = (call, _atomic_dq(), os.environ.get(TMA_ENV, ""), tuple(configs.OVERRIDE.items()),
           tuple(t.stride() for t in pointers), _aligned_bases(*pointers))  # fmt: skip
    plan = _bwd_plans.get(key)
    if plan is None:
        plan = _backward_plan(call, cap, q, k, v, out, dout, dq, dk, dv)
        if len(_bwd_plans) >= _CACHE_LIMIT:
            _bwd_plans.clear()
        _bwd_plans[key] = plan
    cfg, kv_cfg, kv_tiles, q_tiles, atomic_dq, common, strides, q_templates, kv_templates = plan
    q_s, k_s, v_s, o_s, do_s, dq_s, dk_s, dv_s = strides
    d, dv_dim = call.head_dim, call.head_dim_v
    sparse = {}
    kv_lists = q_lists = (lse, lse, lse, lse, lse)
    kv_intervals = q_intervals = (lse, lse, lse, lse)
    if _is_interval(call):
        sparse = dict(INTERVAL=True)
        q_intervals = _interval_operands(call, _interval_spans(call.sparsity, cfg.block_m, cfg.block_n))
        kv_intervals = _interval_operands(call, _interval_row_spans(call.sparsity, kv_cfg.block_m, kv_cfg.block_n))
    elif _pattern_block(call):
        sparse = dict(SPARSE=True, PATTERN_BLOCK=call.sparsity.block)
        kv_lists = _pattern_walk(call, "q", cfg.block_m, cfg.block_n, q.device)
        q_lists = _pattern_walk(call, "k", kv_cfg.block_n, kv_cfg.block_m, q.device)
    delta = torch.empty(b, hq, sq, dtype=torch.float32, device=q.device)
    dlse_ptr = delta if dlse_arg is None else dlse_arg
    if atomic_dq:  # the dK/dV kernel makes dQ: delta needs a pass of its own before it
        direct.launch(
            kernels.attn_bwd_delta, (triton.cdiv(sq, cfg.block_m), b * hq), key,
            out, dout, dlse_ptr, delta, *o_s, *do_s, sq, hq, dv_dim,
            BLOCK_M=cfg.block_m, BLOCK_DV=common["BLOCK_DV"], HAS_DLSE=dlse_arg is not None,
        )  # fmt: skip
    else:  # dQ first: its programs also make delta, which the dK/dV kernel reads
        bm, bn = cfg.block_m, cfg.block_n
        q_o, k_o, v_o, do_o, dq_o = _bind(q_tiles, q_templates, q, k, v, dout, dq)
        direct.launch(
            kernels.attn_bwd_dq, (triton.cdiv(sq, bm), b * hq), key,
            q_o, k_o, v_o, do_o, lse, delta, dq_o, out, dlse_ptr, *kv_lists, *q_intervals, *q_s, *k_s, *v_s, *do_s,
            *dq_s, *o_s,
            sq, sk, hq, d, dv_dim,
            BLOCK_M=bm, BLOCK_N=bn, TILES=q_tiles, MAKE_DELTA=True, HAS_DLSE=dlse_arg is not None,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common, **sparse,
        )  # fmt: skip
    bm, bn = kv_cfg.block_m, kv_cfg.block_n
    q_o, k_o, v_o, do_o, dk_o, dv_o = _bind(kv_tiles, kv_templates, q, k, v, dout, dk, dv)
    dq_acc = torch.zeros(b, hq, sq, common["BLOCK_D"], dtype=torch.float32, device=q.device) if atomic_dq else delta
    direct.launch(
        kernels.attn_bwd_dkdv, (triton.cdiv(sk, bn), b * hkv), key,
        q_o, k_o, v_o, do_o, lse, delta, dk_o, dv_o, dq_acc, *q_lists, *kv_intervals, *q_s, *k_s, *v_s, *do_s,
        *dk_s, *dv_s, sq, sk, hkv, d, dv_dim,
        BLOCK_M=bm, BLOCK_N=bn, TILES=kv_tiles, ATOMIC_DQ=atomic_dq,
        num_warps=kv_cfg.num_warps, num_stages=kv_cfg.num_stages, **common, **sparse,
    )  # fmt: skip
    if atomic_dq:
        dq.copy_((dq_acc[..., : call.head_dim] * call.scale).transpose(1, 2))
    return dq, dk, dv


_bwd_plans: dict[tuple, tuple] = {}


def _backward_plan(call: AttentionCall, cap: tuple[int, int] | None, q, k, v, out, dout, dq, dk, dv) -> tuple:
    """The backward's configs and tile modes for one call signature (``key`` in ``backward``)."""
    needs_tma = _needs_tma(call, cap)
    tuning = {"causal": call.band[1] is not None, "fp32": call.dtype == torch.float32,
              "pattern_block": _pattern_block(call)}  # fmt: skip
    dim = max(call.head_dim, call.head_dim_v)
    cfg = configs.pick("dq", dim, cap, loop_len=call.seqlen_k, **tuning)
    kv_cfg = configs.pick("dkdv", dim, cap, loop_len=call.seqlen_q, **tuning)
    kv_tiles = _tiles(cap, kv_cfg.tma or needs_tma, q, k, v, dout, dk, dv)
    q_tiles = _tiles(cap, cfg.tma or needs_tma, q, k, v, dout, dq)
    if needs_tma and POINTER in (kv_tiles, q_tiles):
        raise RuntimeError(f"triton_hopper: {POINTER_PATH_HEAD_DIM_V}; inputs not TMA-compatible after a copy")
    # fixed by the key, so taken once: the strides, and the descriptor templates of each launch
    strides = tuple(_bsh(t) for t in (q, k, v, out, dout, dq, dk, dv))
    d, dv_dim = call.head_dim, call.head_dim_v
    bm, bn = cfg.block_m, cfg.block_n
    q_templates = _operand_templates(q_tiles, (q, bm, d), (k, bn, d), (v, bn, dv_dim), (dout, bm, dv_dim), (dq, bm, d))
    bm, bn = kv_cfg.block_m, kv_cfg.block_n
    kv_templates = _operand_templates(kv_tiles, (q, bm, d), (k, bn, d), (v, bn, dv_dim), (dout, bm, dv_dim),
                                      (dk, bn, d), (dv, bn, dv_dim))  # fmt: skip
    return cfg, kv_cfg, kv_tiles, q_tiles, _atomic_dq(), _common(call), strides, q_templates, kv_templates
