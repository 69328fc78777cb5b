"""The pattern protocol every backend consumes, and the caller-given dense mask."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from portattn._call import check_mask_shape

if TYPE_CHECKING:
    from collections.abc import Hashable


class SparsityPattern:
    """Base of every pattern. Subclasses set ``kind`` and implement ``allowed_mask``."""

    kind: ClassVar[str] = ""

    @property
    def cache_key(self) -> Hashable:
        """What dispatch may depend on; calls with equal keys take the same backend."""
        return self

    def validate(self, batch: int, heads: int, seqlen_q: int, seqlen_k: int) -> None:
        """Raise ``ValueError`` if the pattern does not fit these shapes."""

    def allowed_mask(self, batch: int, heads: int, seqlen_q: int, seqlen_k: int, device: torch.device) -> torch.Tensor:
        """Boolean ``(batch|1, heads|1, seqlen_q, seqlen_k)``, True where attention is allowed."""
        raise NotImplementedError

    def tile_mask(
        self,
        batch: int,
        heads: int,
        seqlen_q: int,
        seqlen_k: int,
        q_range: tuple[int, int],
        k_range: tuple[int, int],
        device: torch.device,
    ) -> torch.Tensor | None:
        """Boolean ``(batch|1, heads|1, q_end-q_start, k_end-k_start)`` of a call with these lengths,
        or None when all of the tile is allowed."""
        full = self.allowed_mask(batch, heads, seqlen_q, seqlen_k, device)
        return full[:, :, q_range[0] : q_range[1], k_range[0] : k_range[1]]


class DenseMask(SparsityPattern):
    """A caller-given boolean mask, True = allowed (SDPA's boolean ``attn_mask`` convention).

    Args:
        mask: bool ``(batch|1, heads_q|1, seqlen_q, seqlen_k)`` or ``(seqlen_q, seqlen_k)``.
    """

    kind = "dense_mask"

    def __init__(self, mask: torch.Tensor) -> None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"dense_mask takes a torch.bool tensor, got {got}")
        if mask.dim() == 2:
            mask = mask[None, None]
        if mask.dim() != 4:
            raise ValueError(
                "dense_mask must be (seqlen_q, seqlen_k) or (batch, heads, seqlen_q, seqlen_k), "
                f"got {tuple(mask.shape)}"
            )
        self.mask = mask

    @property
    def cache_key(self) -> Hashable:
        return ("dense_mask", tuple(self.mask.shape), self.mask.device)

    def validate(self, batch: int, heads: int, seqlen_q: int, seqlen_k: int) -> None:
        check_mask_shape("dense_mask", self.mask, batch, heads, seqlen_q, seqlen_k)

    def allowed_mask(self, batch: int, heads: int, seqlen_q: int, seqlen_k: int, device: torch.device) -> torch.Tensor:
        return self.mask.to(device)

    def tile_mask(self, batch, heads, seqlen_q, seqlen_k, q_range, k_range, device):
        return self.mask[:, :, q_range[0] : q_range[1], k_range[0] : k_range[1]].to(device)
