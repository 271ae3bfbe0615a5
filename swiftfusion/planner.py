"""Cost model over topology and model shape: the bytes a sequence-parallel layout moves per
attention layer on each link class, and the choice of layout for ``sp_layout="auto"``.

The model replays the communication of ``attention.usp_attention`` rank by rank (who sends what to
whom), so it is exact for our implementation, uneven head splits and sequence padding included;
the tests hold it against the bytes ``comm`` actually counted.
"""

from __future__ import annotations

from .attention.sequence_parallel import head_splits
from .config import ParallelConfig
from .mesh import PHYSICAL_ORDER, Placement
from .topology import INTER, LINK_CLASSES, Topology


def attention_traffic(
    config: ParallelConfig,
    topology: Topology,
    layout: str,
    *,
    batch: int,
    heads: int,
    tokens: int,
    head_dim: int,
    element_bytes: int = 4,
) -> dict[str, int]:
    """Bytes sent by all ranks together in one sequence-parallel attention layer, per link class."""
    ulysses, ring = config.ulysses_degree, config.ring_degree
    local = -(-tokens // (ulysses * ring))  # tokens per rank, padding included
    splits = head_splits(heads, ulysses)
    row = batch * local * head_dim * element_bytes  # one head of one rank's tokens
    totals = dict.fromkeys(LINK_CLASSES, 0)
    for sp_group in Placement(config, layout).groups(("ring", "ulysses")):  # sp_index order
        for r in range(ring):
            members = sp_group[r * ulysses : (r + 1) * ulysses]
            for i, src in enumerate(members):
                for j, dst in enumerate(members):
                    if i != j:  # Q, K, V: j's heads of my tokens; the output: my heads of j's tokens
                        totals[topology.link_class(src, dst)] += (3 * splits[j] + splits[i]) * row
        for u in range(ulysses):
            members = [sp_group[r * ulysses + u] for r in range(ring)]
            for r, src in enumerate(members):  # (ring - 1) shifts of K and V (my heads, U·local tokens)
                dst = members[(r + 1) % ring]
                if dst != src:
                    totals[topology.link_class(src, dst)] += (ring - 1) * 2 * splits[u] * ulysses * row
    return totals


def choose_layout(config: ParallelConfig, topology: Topology, heads: int, head_dim: int) -> str:
    """The placement that sends the fewest bytes over inter-node links (ties: xDiT's ``usp``)."""
    def inter_bytes(layout: str) -> int:
        shape = dict(batch=1, heads=heads, tokens=config.sp_degree, head_dim=head_dim)
        return attention_traffic(config, topology, layout, **shape)[INTER]

    return min(PHYSICAL_ORDER, key=lambda layout: (inter_bytes(layout), layout != "usp"))
