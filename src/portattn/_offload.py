"""KV offload: ``q`` on a CUDA device, ``k`` and ``v`` in host memory (SPEC §1; FastAttention's
CPU-GPU cooperative strategy).

The core streams K/V to the device in chunks of keys and runs the chosen backend's forward on each
chunk while the next one is in flight; the partial results are merged by their log-sum-exp. Any
backend that declares the ``kv_offload`` feature is driven this way: its forward only ever sees
device tensors, with the visibility band shifted to the chunk's keys.

Device memory for K/V stays within a budget whatever ``seqlen_k`` is: two chunk buffers (one being
filled while the other is read), sized so that both fit in ``budget`` bytes. The budget comes from
``with portattn.kv_budget(nbytes):``, else ``PORTATTN_KV_BUDGET``, else :data:`DEFAULT_BUDGET`.
The output's float32 accumulator (the size of ``out`` in float32) comes on top: it scales with the
queries, not the keys.

Overlap, per chunk ``i`` with buffer slot ``i % 2``: the host copies the chunk into a pinned staging
buffer (skipped when ``k``/``v`` are pinned and contiguous: the copy engine reads them directly), a
copy stream moves it to the device once the compute stream is done with the slot's previous chunk,
and the compute stream waits for that copy, runs the backend and merges. The host stages chunk
``i + 1`` while the device computes chunk ``i``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Iterator

    from portattn._call import AttentionCall

BUDGET_ENV = "PORTATTN_KV_BUDGET"
DEFAULT_BUDGET = 2 << 30  # bytes of device memory for the K/V chunk buffers
CHUNK_ALIGN = 256  # keys per chunk are a multiple of this (whole key tiles for every kernel)
_budget: contextvars.ContextVar[int | None] = contextvars.ContextVar("portattn_kv_budget", default=None)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str) -> int:
    """``"512M"``, ``"2GiB"``, ``"1.5g"``, ``"1000000"`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if m is None:
        raise ValueError(f"{BUDGET_ENV} must be a byte count like 512M or 2GiB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


@contextlib.contextmanager
def kv_budget(nbytes: int) -> Iterator[None]:
    """Within the block, KV-offload calls keep at most ``nbytes`` of K/V chunks on the device."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
        raise ValueError(f"kv_budget takes a positive number of bytes, got {nbytes!r}")
    token = _budget.set(nbytes)
    try:
        yield
    finally:
        _budget.reset(token)


def budget_bytes() -> int:
    """The K/V device-memory budget in force (context, then environment, then the default)."""
    nbytes = _budget.get()
    if nbytes is not None:
        return nbytes
    env = os.environ.get(BUDGET_ENV, "").strip()
    return parse_bytes(env) if env else DEFAULT_BUDGET


def chunk_keys(call: AttentionCall, budget: int) -> int:
    """Keys per chunk: two chunks of K and V fit in ``budget`` bytes. A multiple of
    :data:`CHUNK_ALIGN` where the budget allows one, else of 16 (at least 16, the one case that may
    exceed a tiny budget); at most ``seqlen_k`` rounded up to the alignment."""
    itemsize = torch.empty((), dtype=call.dtype).element_size()
    per_key = 2 * call.batch * call.heads_kv * (call.head_dim + call.head_dim_v) * itemsize  # two slots
    keys = budget // per_key
    align = CHUNK_ALIGN if keys >= CHUNK_ALIGN else 16
    keys = max(16, keys // align * align)
    return min(keys, -(-call.seqlen_k // align) * align)


def visible_chunks(call: AttentionCall, chunk: int) -> list[tuple[int, int]]:
    """``[start, end)`` key ranges of ``chunk`` keys that some query row can see under the band."""
    lo, hi = call.band
    spans = []
    for start in range(0, call.seqlen_k, chunk):
        end = min(start + chunk, call.seqlen_k)
        # the band holds lo <= j - i <= hi for some i in [0, seqlen_q), j in [start, end)
        if (lo is None or end - 1 >= lo) and (hi is None or start - (call.seqlen_q - 1) <= hi):
            spans.append((start, end))
    return spans


def shifted_band(band: tuple[int | None, int | None], start: int) -> tuple[int | None, int | None]:
    """The band in a chunk's own key indices (key ``j`` of the call is key ``j - start`` of the chunk)."""
    lo, hi = band
    return (None if lo is None else lo - start, None if hi is None else hi - start)


class LseMerge:
    """Running merge of partial attention results over disjoint key sets, in float32.

    ``out (batch, seqlen_q, heads_q, head_dim_v)``, ``lse (batch, heads_q, seqlen_q)``: after every
    part is added, ``result()`` is the attention over the union (rows that saw no key: 0, -inf)."""

    def __init__(self) -> None:
        self.acc: torch.Tensor | None = None
        self.lse: torch.Tensor | None = None

    def add(self, out: torch.Tensor, lse: torch.Tensor) -> None:
        lse = lse.float()
        if self.acc is None:
            self.acc, self.lse = out.float(), lse.clone()
            return
        new = torch.logaddexp(self.lse, lse)
        # a row with no key in either part has new = -inf: weights 0, not exp(nan)
        none = new == float("-inf")
        w_old = torch.where(none, 0.0, torch.exp(self.lse - new)).transpose(1, 2).unsqueeze(-1)
        w_new = torch.where(none, 0.0, torch.exp(lse - new)).transpose(1, 2).unsqueeze(-1)
        self.acc.mul_(w_old).addcmul_(out, w_new)  # no float32 copy of the part
        self.lse = new

    def result(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.acc is not None and self.lse is not None, "no part was added"
        return self.acc.to(dtype), self.lse


ChunkForward = Callable[[torch.Tensor, torch.Tensor, tuple[int | None, int | None]], tuple[torch.Tensor, torch.Tensor]]


def stream_forward(
    call: AttentionCall,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    chunk_forward: ChunkForward,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q`` over host ``k``, ``v`` by chunks on ``q``'s device; ``(out, lse)``.

    ``chunk_forward(k_chunk, v_chunk, band)`` runs one chunk on the device and returns its
    ``(out, lse)``; ``chunk`` (keys) defaults to what the budget allows. On a CPU ``q`` (tests) the
    same loop runs with plain copies."""
    chunk = chunk or chunk_keys(call, budget_bytes())
    spans = visible_chunks(call, chunk)
    if not spans:  # no row sees any key
        out = torch.zeros(q.shape[:-1] + (call.head_dim_v,), dtype=q.dtype, device=q.device)
        lse = torch.full((call.batch, call.heads_q, call.seqlen_q), float("-inf"), device=q.device)
        return out, lse
    mover = _CudaMover(q.device, k, v, chunk) if q.device.type == "cuda" else _PlainMover(q.device)
    merge = LseMerge()
    for start, end in spans:
        k_dev, v_dev = mover.put(k[:, start:end], v[:, start:end])
        out, lse = chunk_forward(k_dev, v_dev, shifted_band(call.band, start))
        merge.add(out, lse)
        mover.release()
    return merge.result(q.dtype)


class _PlainMover:
    """Synchronous copies (a CPU ``q``: the loop's logic without streams)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def put(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return k.to(self.device, copy=True), v.to(self.device, copy=True)

    def release(self) -> None:
        pass


class _CudaMover:
    """Two device slots of ``chunk`` keys for K and V, filled on a copy stream from pinned memory."""

    def __init__(self, device: torch.device, k: torch.Tensor, v: torch.Tensor, chunk: int) -> None:
        b, _, h, _ = k.shape
        self.device = device
        self.copy_stream = torch.cuda.Stream(device)
        self.compute_stream = torch.cuda.current_stream(device)
        sizes = (b * chunk * h * k.shape[-1], b * chunk * h * v.shape[-1])
        self.slots = [[torch.empty(n, dtype=k.dtype, device=device) for n in sizes] for _ in range(2)]
        # pinned, contiguous sources are read by the copy engine directly; others are staged
        self.direct = all(t.is_pinned() and t.is_contiguous() for t in (k, v))
        self.staging = (
            None if self.direct else [[torch.empty(n, dtype=k.dtype, pin_memory=True) for n in sizes] for _ in range(2)]
        )
        self.copied: list[torch.cuda.Event | None] = [None, None]  # slot's last host-to-device copy
        self.consumed: list[torch.cuda.Event | None] = [None, None]  # compute done with the slot
        self.i = 0

    def put(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slot = self.i % 2
        dev = [buf[: t.numel()].view(t.shape) for buf, t in zip(self.slots[slot], (k, v), strict=True)]
        if self.staging is not None:
            if self.copied[slot] is not None:
                self.copied[slot].synchronize()  # the staging buffer's previous copy has left
            src = [buf[: t.numel()].view(t.shape) for buf, t in zip(self.staging[slot], (k, v), strict=True)]
            for s, t in zip(src, (k, v), strict=True):
                s.copy_(t)  # host memory to pinned, while the device computes the previous chunk
        else:
            src = [k, v]
        with torch.cuda.stream(self.copy_stream):
            if self.consumed[slot] is not None:
                self.copy_stream.wait_event(self.consumed[slot])
            for d, s in zip(dev, src, strict=True):
                if s.is_contiguous():
                    d.copy_(s, non_blocking=True)
                else:  # a slice of keys of a pinned (batch, seqlen, heads, dim) tensor: batch by batch
                    for bi in range(s.shape[0]):
                        d[bi].copy_(s[bi], non_blocking=True)
            self.copied[slot] = self.copy_stream.record_event()
        # the slots were allocated on the compute stream, which waits for every copy into them: the
        # allocator cannot hand them out again while the copy stream still writes
        self.compute_stream.wait_event(self.copied[slot])
        return dev[0], dev[1]

    def release(self) -> None:
        self.consumed[self.i % 2] = self.compute_stream.record_event()
        self.i += 1


def forward(call: AttentionCall, backend_name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """The KV-offload forward of ``call`` through backend ``backend_name``: ``(out, lse)``."""
    from portattn import _api

    def run_chunk(k_dev: torch.Tensor, v_dev: torch.Tensor, band: tuple[int | None, int | None]):
        return _api.run(
            q, k_dev, v_dev, band=band, scale=call.scale, softcap=call.softcap, return_lse=True, backend=backend_name
        )

    with torch.no_grad():
        return stream_forward(call, q, k, v, run_chunk)
