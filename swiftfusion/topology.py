"""Where ranks live: nodes of ``ranks_per_node`` consecutive ranks, the link class between two
ranks (``intra`` inside a node, ``inter`` between nodes), and each class's bandwidth and latency.
Knows nothing about models."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

INTRA = "intra"
INTER = "inter"
LINK_CLASSES = (INTRA, INTER)
# Environment variables through which a launcher (or a job script) declares the links, as
# "GBIT_PER_S[,LATENCY_US]"; the emulated cluster sets the inter-node one to its shaped rate.
LINK_ENV = {INTRA: "SWIFTFUSION_INTRA_NODE_LINK", INTER: "SWIFTFUSION_INTER_NODE_LINK"}


@dataclass(frozen=True)
class Link:
    """One link class: bandwidth per rank in Gbit/s and the latency of one message in µs."""

    gbit_per_s: float
    latency_us: float = 0.0

    def __post_init__(self) -> None:
        for name, value, low in (("gbit_per_s", self.gbit_per_s, "> 0"), ("latency_us", self.latency_us, ">= 0")):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not (value > 0 if low == "> 0" else value >= 0):
                raise ValueError(f"link {name} must be a number {low}, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> Link:
        """``"GBIT_PER_S"`` or ``"GBIT_PER_S,LATENCY_US"``, e.g. ``"400,5"``."""
        parts = text.split(",")
        try:
            if len(parts) > 2:
                raise ValueError
            values = [float(part) for part in parts]
        except ValueError:
            raise ValueError(f"a link is GBIT_PER_S or GBIT_PER_S,LATENCY_US (e.g. 400,5), got {text!r}") from None
        return cls(*values)

    def seconds(self, nbytes: float, messages: float) -> float:
        return nbytes * 8 / (self.gbit_per_s * 1e9) + messages * self.latency_us * 1e-6


# A GPU node of the kind the system targets: NVLink inside (~450 GB/s per GPU and direction), one
# 400 Gbit/s NIC per GPU between nodes (InfiniBand / EFA): about 10x apart.
DEFAULT_LINKS = {INTRA: Link(3600.0, 3.0), INTER: Link(400.0, 10.0)}


@dataclass(frozen=True)
class Topology:
    world_size: int
    ranks_per_node: int
    intra: Link = field(default=DEFAULT_LINKS[INTRA])
    inter: Link = field(default=DEFAULT_LINKS[INTER])

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

    def link(self, link_class: str) -> Link:
        return self.intra if link_class == INTRA else self.inter

    @classmethod
    def detect(cls, world_size: int, ranks_per_node: int | None = None, intra: Link | None = None,
               inter: Link | None = None) -> Topology:
        """Declared values win; else the launcher's environment (torchrun's LOCAL_WORLD_SIZE, the
        ``SWIFTFUSION_*_NODE_LINK`` variables); else one node and ``DEFAULT_LINKS``."""
        if ranks_per_node is None:
            ranks_per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        links = {}
        for link_class, declared in ((INTRA, intra), (INTER, inter)):
            text = os.environ.get(LINK_ENV[link_class])
            links[link_class] = declared or (Link.parse(text) if text else DEFAULT_LINKS[link_class])
        return cls(world_size, ranks_per_node, links[INTRA], links[INTER])
