"""FP8 helpers in plain torch: the incoherent-processing rotation and block quantization.

The rotation is ``M = diag(signs) @ H / sqrt(n)`` with ``H`` the Sylvester Hadamard matrix and random
±1 ``signs`` (seeded per size): orthogonal, so ``(q M)(k M)^T = q k^T``, while an outlier in one
coordinate of ``q`` or ``k`` is spread over all ``n``. The prepass kernel applies ``M`` as one
tensor-core matmul per tile; :func:`fwht` is the O(n log n) transform it must agree with.

Block quantization gives each tile of ``block`` rows of one (batch, head) its own float8 e4m3 scale,
``amax / 448``. These functions are the reference the kernels are tested against, and the baselines
of the accuracy benchmark (per-tensor scaling, no rotation).
"""

from __future__ import annotations

import functools
import math

import torch

E4M3_MAX = 448.0
ROTATION_SEED = 0x5EED


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized fast Walsh-Hadamard transform over the last dim (a power of two): ``x @ H``."""
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two last dim, got {n}")
    y = x.reshape(-1, n).clone()
    h = 1
    while h < n:
        y = y.view(-1, n // (2 * h), 2, h)
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2).view(-1, n)
        h *= 2
    return y.view(x.shape)


def signs(n: int) -> torch.Tensor:
    """The rotation's random ±1 diagonal for size ``n`` (float64, CPU), the same in every process."""
    gen = torch.Generator().manual_seed(ROTATION_SEED + n)
    return torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1


@functools.lru_cache(maxsize=16)
def _signed_hadamard_cpu(n: int) -> torch.Tensor:
    return fwht(torch.diag(signs(n)))  # rows scaled by the signs, then transformed: entries ±1


def signed_hadamard(n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``diag(signs) @ H`` ``(n, n)``, entries ±1 (exact in any float dtype); ``M`` is this / sqrt(n).
    Cached per device: a copy from the host on every call would stall the GPU's queue."""
    return _signed_hadamard_on(n, torch.device(device), dtype)


@functools.lru_cache(maxsize=32)
def _signed_hadamard_on(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _signed_hadamard_cpu(n).to(device=device, dtype=dtype)


def rotation(n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``M`` ``(n, n)``: apply as ``x @ M``."""
    return (_signed_hadamard_cpu(n) / math.sqrt(n)).to(device=device, dtype=dtype)


def rotate(x: torch.Tensor) -> torch.Tensor:
    """``x @ M`` over the last dim by the fast transform: ``(x * signs) @ H / sqrt(n)``."""
    n = x.shape[-1]
    s = signs(n).to(device=x.device, dtype=torch.float64)
    return fwht(x.double() * s) / math.sqrt(n)


def quantize_blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block quantization of ``x`` ``(batch, seqlen, heads, dim)``: float8 e4m3 values of the same
    shape and float32 scales ``(batch, heads, cdiv(seqlen, block))``, one per ``block`` rows of a head,
    so that ``values * scale`` approximates ``x``."""
    b, s, h, d = x.shape
    nblk = -(-s // block)
    padded = torch.zeros(b, nblk * block, h, d, dtype=torch.float64, device=x.device)
    padded[:, :s] = x.double()
    tiles = padded.view(b, nblk, block, h, d)
    amax = tiles.abs().amax(dim=(2, 4))  # (batch, blocks, heads)
    scale = amax.clamp_min(1e-12) / E4M3_MAX
    values = (tiles / scale[:, :, None, :, None]).to(torch.float8_e4m3fn).view(b, nblk * block, h, d)[:, :s]
    return values, scale.transpose(1, 2).float().contiguous()


def dequantize_blocks(values: torch.Tensor, scale: torch.Tensor, block: int) -> torch.Tensor:
    """Float64 ``values * scale`` for :func:`quantize_blocks` output."""
    s = values.shape[1]
    per_row = scale.double().repeat_interleave(block, dim=2)[:, :, :s]  # (batch, heads, seqlen)
    return values.double() * per_row.transpose(1, 2)[..., None]


def p_operand_key_order(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The key order that lets the FP8 ``P V`` take P straight from the registers of ``S``'s accumulator:
    ``order[slot]`` is the key at slot ``slot`` of V^T, for ``n`` keys (a multiple of 32). Within each 32
    keys, a thread's accumulator holds keys ``2t, 2t+1, 8+2t, 9+2t`` (and the same plus 16), where the
    e4m3 A operand wants slots ``4t .. 4t+3``: slot ``16h + 4t + 2j + e`` takes key ``16h + 8j + 2t + e``.
    The Gluon forward relabels P's columns the same way (a reshape and a permute), so ``P V`` is unchanged.
    Cached per device, as :func:`signed_hadamard`: a copy from the host on every call would stall the queue."""
    if n % 32:
        raise ValueError(f"p_operand_key_order needs a multiple of 32 keys, got {n}")
    return _key_order_on(n, torch.device(device))


@functools.lru_cache(maxsize=32)
def _key_order_on(n: int, device: torch.device) -> torch.Tensor:
    slot = torch.arange(n)
    h, t, j, e = (slot >> 4) & 1, (slot >> 2) & 3, (slot >> 1) & 1, slot & 1
    return ((slot & ~31) | (h << 4) | (j << 3) | (t << 1) | e).to(device)


def quantize_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor quantization (the baseline FP8 attention): one scale for all of ``x``."""
    scale = x.double().abs().amax().clamp_min(1e-12) / E4M3_MAX
    return (x.double() / scale).to(torch.float8_e4m3fn), scale.float()


def quantize_per_kv_head(x: torch.Tensor, heads_kv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FA3-style caller quantization of ``x`` ``(batch, seqlen, heads, dim)``: e4m3 values and a float32
    descale ``(batch, heads_kv)``, one per key/value head (query heads share their group's), so that
    ``values * descale`` approximates ``x``; what ``attention(..., q_descale=...)`` takes."""
    b, s, h, d = x.shape
    groups = x.double().view(b, s, heads_kv, h // heads_kv, d)
    descale = groups.abs().amax(dim=(1, 3, 4)).clamp_min(1e-12) / E4M3_MAX
    values = (groups / descale[:, None, :, None, None]).to(torch.float8_e4m3fn).view(b, s, h, d)
    return values, descale.float()


def outlier_inputs(
    shape: tuple[int, ...], gen: torch.Generator, fraction: float = 1e-3, std: float = 10.0
) -> torch.Tensor:
    """FA3's accuracy inputs: standard normal, with ``fraction`` of the entries drawn with ``std``."""
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    pick = torch.rand(shape, generator=gen, dtype=torch.float64) < fraction
    return torch.where(pick, torch.randn(shape, generator=gen, dtype=torch.float64) * std, x)


def emulated_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_m: int, block_n: int, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 attention as the kernel computes it, in float64 on the same values: Q and K zero-padded to a
    power-of-two head dim, rotated and block-quantized (``block_m`` query rows, ``block_n`` keys per
    scale), V block-quantized; P is not quantized. ``(out, lse)`` from the reference backend."""
    import portattn  # noqa: PLC0415  (the package imports this module's backend)

    d = q.shape[-1]
    n = max(16, 1 << (d - 1).bit_length())
    pad = (0, n - d)
    qd = dequantize_blocks(*quantize_blocks(rotate(torch.nn.functional.pad(q.double(), pad)), block_m), block_m)
    kd = dequantize_blocks(*quantize_blocks(rotate(torch.nn.functional.pad(k.double(), pad)), block_n), block_n)
    vd = dequantize_blocks(*quantize_blocks(v, block_n), block_n)
    qd, kd, vd = (t.float() for t in (qd, kd, vd))  # the API takes 16/32-bit; the reference runs in float64
    return portattn.attention(qd, kd, vd, backend="reference", scale=1 / math.sqrt(d), return_lse=True, **kwargs)
