"""Where ranks live: nodes of ``ranks_per_node`` consecutive ranks, and the link class between two
ranks (``intra`` inside a node, ``inter`` between nodes). Knows nothing about models."""

from __future__ import annotations

import os
from dataclasses import dataclass

INTRA = "intra"
INTER = "inter"
LINK_CLASSES = (INTRA, INTER)


@dataclass(frozen=True)
class Topology:
    world_size: int
    ranks_per_node: int

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if self.ranks_per_node < 1 or self.world_size % self.ranks_per_node:
            raise ValueError(
                f"ranks_per_node={self.ranks_per_node} must be a positive divisor of the world size "
                f"{self.world_size}"
            )

    @property
    def num_nodes(self) -> int:
        return self.world_size // self.ranks_per_node

    def node_of(self, rank: int) -> int:
        return rank // self.ranks_per_node

    def link_class(self, rank_a: int, rank_b: int) -> str:
        return INTRA if self.node_of(rank_a) == self.node_of(rank_b) else INTER

    @classmethod
    def detect(cls, world_size: int, ranks_per_node: int | None = None) -> Topology:
        """Declared ``ranks_per_node`` wins; else torchrun's LOCAL_WORLD_SIZE; else one node."""
        if ranks_per_node is None:
            ranks_per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        return cls(world_size=world_size, ranks_per_node=ranks_per_node)
