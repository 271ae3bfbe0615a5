"""Cost model over topology and model shape: the bytes a sequence-parallel layout moves per
attention layer on each link class, and the choice of layout for ``sp_layout="auto"``.

The model replays the communication of ``attention.usp_attention`` rank by rank (who sends what to
whom), so it is exact for our implementation, uneven head splits and sequence padding included;
the tests hold it against the bytes ``comm`` actually counted.
"""

from __future__ import annotations

from .attention.sequence_parallel import head_splits
from .config import ParallelConfig
from .mesh import PHYSICAL_ORDER, Placement, split_by_node
from .topology import INTER, INTRA, LINK_CLASSES, Topology


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
    phased = config.all_to_all == "tapa"
    for sp_group in Placement(config, layout).groups(("ring", "ulysses")):  # sp_index order
        for r in range(ring):
            members = sp_group[r * ulysses : (r + 1) * ulysses]
            # Q, K, V go out as j's heads of my tokens; the output comes back as my heads of j's tokens.
            scatter = [[3 * splits[j] * row for j in range(ulysses)] for _ in range(ulysses)]
            gather = [[splits[i] * row] * ulysses for i in range(ulysses)]
            for matrix in (scatter, gather):
                for link, sent in exchange_traffic(members, matrix, topology, phased).items():
                    totals[link] += sent
        for u in range(ulysses):
            members = [sp_group[r * ulysses + u] for r in range(ring)]
            for r, src in enumerate(members):  # (ring - 1) shifts of K and V (my heads, U·local tokens)
                dst = members[(r + 1) % ring]
                if dst != src:
                    totals[topology.link_class(src, dst)] += (ring - 1) * 2 * splits[u] * ulysses * row
    return totals


def exchange_traffic(members: tuple[int, ...], nbytes: list[list[int]], topology: Topology,
                     phased: bool) -> dict[str, int]:
    """Bytes per link class of an all-to-all among ``members`` where member i sends ``nbytes[i][j]``
    to member j: directly (flat), or relayed as TAPA does when the members span several nodes with
    several members on each (see ``comm.tapa_all_to_all``)."""
    totals = dict.fromkeys(LINK_CLASSES, 0)
    nodes = split_by_node(members, topology)
    index = {rank: i for i, rank in enumerate(members)}
    if not phased or len(nodes) == 1 or len(nodes[0]) == 1:
        for i, src in enumerate(members):
            for j, dst in enumerate(members):
                if i != j:
                    totals[topology.link_class(src, dst)] += nbytes[i][j]
        return totals
    for n, on_node in enumerate(nodes):
        for m, src in enumerate(on_node):
            for m2 in range(len(on_node)):  # phase 1: to local peer m2, everything for index m2
                if m2 != m:
                    totals[INTRA] += sum(nbytes[index[src]][index[other[m2]]] for other in nodes)
            for n2, other in enumerate(nodes):  # phase 2: to (n2, m), what this node holds for it
                if n2 != n:
                    totals[INTER] += sum(nbytes[index[local]][index[other[m]]] for local in on_node)
    return totals


def choose_layout(config: ParallelConfig, topology: Topology, heads: int, head_dim: int) -> str:
    """The placement that sends the fewest bytes over inter-node links (ties: xDiT's ``usp``)."""
    def inter_bytes(layout: str) -> int:
        shape = dict(batch=1, heads=heads, tokens=config.sp_degree, head_dim=head_dim)
        return attention_traffic(config, topology, layout, **shape)[INTER]

    return min(PHYSICAL_ORDER, key=lambda layout: (inter_bytes(layout), layout != "usp"))
