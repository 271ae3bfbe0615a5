"""Cost model over topology and model shape: the bytes a sequence-parallel layout moves per
attention layer on each link class, and the choice of layout for ``sp_layout="auto"``.

The model replays the communication of ``attention.usp_attention`` rank by rank (who sends what to
whom), so it is exact for our implementation, uneven head splits and sequence padding included;
the tests hold it against the bytes ``comm`` actually counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .attention.sequence_parallel import head_splits
from .comm import TAPA_CHUNKS
from .config import ParallelConfig
from .mesh import PHYSICAL_ORDER, Placement, split_by_node
from .topology import INTER, INTRA, LINK_CLASSES, Topology


@dataclass
class Traffic:
    """What one layer sends, all ranks together, per link class: bytes and non-empty messages."""

    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LINK_CLASSES, 0))
    messages: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LINK_CLASSES, 0))

    def add(self, link: str, nbytes: int, messages: int = 1) -> None:
        if nbytes:
            self.bytes[link] += nbytes
            self.messages[link] += messages


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
    return attention_messages_and_bytes(config, topology, layout, batch=batch, heads=heads, tokens=tokens,
                                        head_dim=head_dim, element_bytes=element_bytes).bytes


def attention_messages_and_bytes(
    config: ParallelConfig,
    topology: Topology,
    layout: str,
    *,
    batch: int,
    heads: int,
    tokens: int,
    head_dim: int,
    element_bytes: int = 4,
) -> Traffic:
    """``Traffic`` of one sequence-parallel attention layer (Ulysses all-to-alls, then Ring)."""
    ulysses, ring = config.ulysses_degree, config.ring_degree
    local = -(-tokens // (ulysses * ring))  # tokens per rank, padding included
    splits = head_splits(heads, ulysses)
    row = batch * local * head_dim * element_bytes  # one head of one rank's tokens
    traffic = Traffic()
    phased = config.all_to_all == "tapa"
    for sp_group in Placement(config, layout).groups(("ring", "ulysses")):  # sp_index order
        for r in range(ring):
            members = sp_group[r * ulysses : (r + 1) * ulysses]
            # Q, K, V go out as j's heads of my tokens; the output comes back as my heads of j's tokens.
            scatter = [[3 * splits[j] * row for j in range(ulysses)] for _ in range(ulysses)]
            gather = [[splits[i] * row] * ulysses for i in range(ulysses)]
            for matrix in (scatter, gather):
                exchange_traffic(members, matrix, topology, phased, traffic)
        for u in range(ulysses):
            members = [sp_group[r * ulysses + u] for r in range(ring)]
            for r, src in enumerate(members):  # (ring - 1) shifts of K and V (my heads, U·local tokens)
                dst = members[(r + 1) % ring]
                if dst != src:
                    for _ in range(ring - 1):
                        traffic.add(topology.link_class(src, dst), 2 * splits[u] * ulysses * row)
    return traffic


def exchange_traffic(members: tuple[int, ...], nbytes: list[list[int]], topology: Topology,
                     phased: bool, traffic: Traffic | None = None) -> dict[str, int]:
    """Bytes per link class of an all-to-all among ``members`` where member i sends ``nbytes[i][j]``
    to member j: directly (flat), or relayed as TAPA does when the members span several nodes with
    several members on each (see ``comm.tapa_all_to_all``: each phase in ``TAPA_CHUNKS`` pieces).
    Adds bytes and messages to ``traffic`` when given."""
    traffic = traffic if traffic is not None else Traffic()
    before = dict(traffic.bytes)
    nodes = split_by_node(members, topology)
    index = {rank: i for i, rank in enumerate(members)}
    if not phased or len(nodes) == 1 or len(nodes[0]) == 1:
        for i, src in enumerate(members):
            for j, dst in enumerate(members):
                if i != j:
                    traffic.add(topology.link_class(src, dst), nbytes[i][j])
    else:
        for n, on_node in enumerate(nodes):
            for m, src in enumerate(on_node):
                for m2 in range(len(on_node)):  # phase 1: to local peer m2, everything for index m2
                    if m2 != m:
                        relayed = sum(nbytes[index[src]][index[other[m2]]] for other in nodes)
                        traffic.add(INTRA, relayed, TAPA_CHUNKS)
                for n2, other in enumerate(nodes):  # phase 2: to (n2, m), what this node holds for it
                    if n2 != n:
                        bundle = sum(nbytes[index[local]][index[other[m]]] for local in on_node)
                        traffic.add(INTER, bundle, TAPA_CHUNKS)
    return {link: traffic.bytes[link] - before[link] for link in LINK_CLASSES}


def estimated_seconds(traffic: Traffic, topology: Topology) -> float:
    """Communication time of one layer on the busiest rank's links, if transfers did not overlap:
    per link class, one rank's share of the bytes at the link's bandwidth plus its messages'
    latency (ranks send in parallel, each on its own link)."""
    ranks = topology.world_size
    return sum(topology.link(link).seconds(traffic.bytes[link] / ranks, traffic.messages[link] / ranks)
               for link in LINK_CLASSES)


def choose_layout(config: ParallelConfig, topology: Topology, heads: int, head_dim: int,
                  tokens: int | None = None) -> str:
    """The placement whose communication takes least time on the topology's links (ties: xDiT's
    ``usp``). With links ~10× apart that is the one moving fewest bytes over inter-node links."""
    shape = dict(batch=1, heads=heads, tokens=tokens or 4096 * config.sp_degree, head_dim=head_dim)

    def cost(layout: str) -> float:
        return estimated_seconds(attention_messages_and_bytes(config, topology, layout, **shape), topology)

    return min(PHYSICAL_ORDER, key=lambda layout: (round(cost(layout), 12), layout != "usp"))
