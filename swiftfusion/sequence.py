"""Splitting a token sequence across the sequence-parallel group and putting it back together.

Any length works: the sequence is padded to a multiple of the group size, each rank takes an
equal contiguous chunk (in ``sp_index`` order), and the padding keys are masked out of attention,
so the result is exactly the unsharded one. ``gather`` drops the padding again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import comm
from .mesh import Group


@dataclass(frozen=True)
class SequenceShard:
    group: Group
    total: int  # real tokens
    local: int  # tokens per rank, padding included

    @classmethod
    def for_length(cls, total: int, group: Group) -> SequenceShard:
        return cls(group, total, -(-total // group.size))

    @property
    def padded(self) -> int:
        return self.local * self.group.size

    @property
    def has_padding(self) -> bool:
        return self.padded != self.total

    def shard(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's chunk of ``x`` along ``dim`` (which must be ``total`` long)."""
        if x.shape[dim] != self.total:
            raise ValueError(f"expected {self.total} tokens along dim {dim}, got {x.shape[dim]}")
        if self.has_padding:  # zeros of any dtype (bool masks, complex rotary factors included)
            shape = list(x.shape)
            shape[dim] = self.padded - self.total
            x = torch.cat([x, x.new_zeros(shape)], dim)
        return x.narrow(dim, self.group.index * self.local, self.local)

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Every rank's chunk concatenated along ``dim``, padding removed."""
        full = comm.all_gather(x, self.group, dim)
        return full.narrow(dim, 0, self.total)

    def key_mask(
        self, batch: int, device: torch.device, user_mask: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The global ``[batch, padded]`` key mask (True = attend), or None when all keys count."""
        if not self.has_padding and user_mask is None:
            return None
        mask = torch.zeros(batch, self.padded, dtype=torch.bool, device=device)
        mask[:, : self.total] = True if user_mask is None else user_mask.to(torch.bool)
        return mask
