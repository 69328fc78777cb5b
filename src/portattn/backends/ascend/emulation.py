"""CPU emulation of ``torch_npu.npu_fusion_attention``.

This is an emulation from the documented semantics, not the NPU kernel; used to test the argument
mapping (``portattn.backends.ascend.fused``) on machines without an NPU. It follows the torch_npu
docstring: ``y = Softmax(Mask(scale * (pse + Q K^T), atten_mask)); out = Dropout(y, keep_prob) V``,
``scale`` defaulting to 1.0, ``atten_mask`` True = masked out, and the ``sparse_mode`` table.

Unverified without hardware (stated as assumptions here): the exact shape of ``softmax_max`` /
``softmax_sum`` (taken as float32 ``(B, N, Sq, 8)``, the row value replicated 8 times), that the max
is taken over the scaled, masked scores (so ``lse = max + log(sum)``), and that the band of
``sparse_mode=0`` is anchored top-left (``i - pre_tockens <= j <= i + next_tockens``).
"""

from __future__ import annotations

import torch

MAX_TOCKENS = 2147483647
COMPRESSED_MASK_SHAPE = (2048, 2048)


def _band(sq: int, sk: int, lo: int | None, hi: int | None, device: torch.device) -> torch.Tensor:
    """Bool ``(sq, sk)``: True (= masked OUT) outside ``lo <= j - i <= hi``."""
    rel = torch.arange(sk, device=device)[None, :] - torch.arange(sq, device=device)[:, None]
    keep = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if lo is not None:
        keep &= rel >= lo
    if hi is not None:
        keep &= rel <= hi
    return ~keep


def _tockens(pre: int, nxt: int, off: int) -> tuple[int | None, int | None]:
    """``(lo, hi)`` of ``j - i`` for a pre/next band around diagonal ``off``; MAX_TOCKENS = unbounded."""
    return (None if pre >= MAX_TOCKENS else off - pre), (None if nxt >= MAX_TOCKENS else off + nxt)


def _user_mask(mask: torch.Tensor | None, sq: int, sk: int, mode: int) -> torch.Tensor:
    """The user mask as bool ``(B|1, N|1, Sq, Sk)`` (documented shapes BNSS, B1SS, 11SS, SS)."""
    if mask is None:
        raise ValueError(f"sparse_mode={mode} needs atten_mask")
    if mask.dim() == 2:
        mask = mask[None, None]
    if mask.dim() != 4 or tuple(mask.shape[-2:]) != (sq, sk):
        raise ValueError(f"atten_mask shape {tuple(mask.shape)} must be BNSS, B1SS, 11SS or SS with S = ({sq}, {sk})")
    return mask.bool()


def npu_fusion_attention_emulated(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    head_num: int,
    input_layout: str,
    pse: torch.Tensor | None = None,
    padding_mask: torch.Tensor | None = None,
    atten_mask: torch.Tensor | None = None,
    scale: float = 1.0,
    keep_prob: float = 1.0,
    pre_tockens: int = MAX_TOCKENS,
    next_tockens: int = MAX_TOCKENS,
    inner_precise: int = 0,
    prefix: list[int] | None = None,
    actual_seq_qlen: list[int] | None = None,
    actual_seq_kvlen: list[int] | None = None,
    sparse_mode: int = 0,
    gen_mask_parallel: bool = True,
    sync: bool = False,
    softmax_layout: str = "",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int, int]:
    """Emulate ``npu_fusion_attention`` (computed in float32, differentiable by autograd).

    Args:
        query: ``(B, Sq, N, D)`` for ``"BSND"`` or ``(B, N, Sq, D)`` for ``"BNSD"``.
        key: ``(B, Skv, Nkv, D)`` / ``(B, Nkv, Skv, D)``; ``N % Nkv == 0`` (query heads grouped).
        value: like ``key`` with last dim ``Dv <= D``.
        pse: additive position bias broadcastable to ``(B, N, Sq, Skv)``, added *before* scaling.
        atten_mask: bool/uint8, True = masked out; ``(B|1, N|1, Sq, Skv)`` or ``(Sq, Skv)`` for modes
            0/1, the compressed ``(2048, 2048)`` ``triu(ones, 1)`` tile for modes 2/3/4.
        sparse_mode: 0 (no mask: full; mask: mask + top-left band pre/next), 1 (full user mask),
            2 (top-left causal), 3 (bottom-right causal), 4 (band anchored bottom-right).
        inner_precise: 2 gives fully masked rows output 0; otherwise such rows are NaN ("undefined").
    Returns:
        ``(attention_out, softmax_max, softmax_sum, softmax_out, seed, offset, mask_length)``:
        ``attention_out`` in the input layout and dtype with last dim ``Dv``; ``softmax_max`` and
        ``softmax_sum`` float32 ``(B, N, Sq, 8)`` (max over scaled masked scores, sum of
        ``exp(score - max)``; a fully masked row has max -inf and sum 0); ``softmax_out`` an empty
        placeholder; ``seed``, ``offset``, ``mask_length`` 0 (no dropout).
    """
    if input_layout not in ("BSND", "BNSD"):
        raise NotImplementedError(f"input_layout {input_layout!r} is not emulated (only 'BSND' and 'BNSD')")
    if keep_prob != 1.0:
        raise NotImplementedError(f"keep_prob={keep_prob} (dropout) is not emulated; only 1.0")
    if sparse_mode not in (0, 1, 2, 3, 4):
        raise NotImplementedError(f"sparse_mode={sparse_mode} is not emulated (only 0-4)")
    if padding_mask is not None:
        raise ValueError("padding_mask is not supported by npu_fusion_attention")
    if input_layout == "BSND":
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))
    b, n, sq, d = query.shape
    nkv, sk = key.shape[1], key.shape[2]
    if n != head_num:
        raise ValueError(f"head_num={head_num} but query has {n} heads")
    if nkv == 0 or n % nkv or value.shape[1] != nkv:
        raise ValueError(f"query heads {n} must be a multiple of key/value heads {nkv}/{value.shape[1]}")
    if key.shape[-1] != d or value.shape[-1] > d:
        raise ValueError(f"head dims must satisfy Dq = Dk >= Dv, got {d}, {key.shape[-1]}, {value.shape[-1]}")

    device = query.device
    off = sk - sq
    if sparse_mode in (2, 3, 4):
        if atten_mask is None or tuple(atten_mask.shape) != COMPRESSED_MASK_SHAPE:
            got = None if atten_mask is None else tuple(atten_mask.shape)
            raise ValueError(f"sparse_mode={sparse_mode} needs the compressed 2048x2048 atten_mask, got {got}")
        if sparse_mode == 2:
            masked = _band(sq, sk, None, 0, device)
        elif sparse_mode == 3:
            masked = _band(sq, sk, None, off, device)
        else:
            masked = _band(sq, sk, *_tockens(pre_tockens, next_tockens, off), device)
        masked = masked[None, None]
    elif sparse_mode == 1:
        masked = _user_mask(atten_mask, sq, sk, 1)
    elif atten_mask is None:
        masked = None  # mode 0 without a mask: full attention, pre/next ignored
    else:
        band = _band(sq, sk, *_tockens(pre_tockens, next_tockens, 0), device)
        masked = _user_mask(atten_mask, sq, sk, 0) | band[None, None]

    group = n // nkv
    qf = query.float()
    kf = key.float().repeat_interleave(group, dim=1)
    vf = value.float().repeat_interleave(group, dim=1)
    scores = qf @ kf.transpose(-1, -2)
    if pse is not None:
        scores = scores + pse.float()
    scores = scores * scale
    if masked is not None:
        scores = scores.masked_fill(masked, float("-inf"))
    no_keys = scores.new_full((b, n, sq, 1), float("-inf"))  # amax of an empty row is an error
    row_max = scores.amax(dim=-1, keepdim=True).detach() if sk else no_keys
    safe_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
    exp = torch.exp(scores - safe_max)
    row_sum = exp.sum(dim=-1, keepdim=True)
    # inner_precise=2: fully masked rows give 0; otherwise 0/0 = NaN there ("undefined" on hardware)
    denom = torch.where(row_sum == 0, torch.ones_like(row_sum), row_sum) if inner_precise == 2 else row_sum
    probs = exp / denom
    out = (probs @ vf).to(query.dtype)
    if input_layout == "BSND":
        out = out.transpose(1, 2)
    softmax_max = row_max.expand(b, n, sq, 8).contiguous()
    softmax_sum = row_sum.expand(b, n, sq, 8).contiguous()
    softmax_out = query.new_empty(0)
    return out, softmax_max, softmax_sum, softmax_out, 0, 0, 0
