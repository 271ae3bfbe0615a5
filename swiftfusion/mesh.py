"""Process groups for a ``ParallelConfig`` on a ``Topology``: which rank sits where.

Placement (``Placement``, pure arithmetic, also used by the planner) lays ranks out row-major over
the physical axis order, innermost last:

- ``usp`` (xDiT's placement): ``data, cfg, pipefusion, ring, ulysses``: a Ulysses group is
  consecutive ranks (inside a node whenever ulysses_degree divides the ranks per node) and Ring
  groups stride across nodes;
- ``tas`` (reversed): ``data, cfg, pipefusion, ulysses, ring``: Ring groups inside a node,
  Ulysses groups strided across nodes.

Whatever the placement, the sequence-parallel group holds the sequence in
``sp_index = ring * ulysses_degree + ulysses`` order, which is what the attention algorithms
assume. Groups are created once per (config, layout, topology) and cached: creating groups is
collective and slow.
"""

from __future__ import annotations

import datetime
import itertools
from dataclasses import dataclass, field, replace

import torch.distributed as dist

from .config import ParallelConfig
from .runtime import default_device
from .runtime import rank as current_rank
from .runtime import world_size as current_world_size
from .topology import Topology

AXES = ("data", "cfg", "pipefusion", "ring", "ulysses")  # logical order; sp groups are (ring, ulysses)
PHYSICAL_ORDER = {
    "usp": ("data", "cfg", "pipefusion", "ring", "ulysses"),
    "tas": ("data", "cfg", "pipefusion", "ulysses", "ring"),
}


@dataclass(frozen=True)
class Group:
    """One process group seen from one of its members."""

    ranks: tuple[int, ...]  # global ranks, in group order
    index: int  # this rank's position in ``ranks``
    topology: Topology
    process_group: object | None  # None when the group has one member
    # For TAPA: this member's node-local subgroup and its same-local-index subgroup across nodes.
    node_local: Group | None = None
    cross_node: Group | None = None
    # One-sided transport (shared-memory puts) when the whole group is inside one node.
    one_sided: object | None = field(default=None, compare=False)

    @property
    def size(self) -> int:
        return len(self.ranks)

    def link_class(self, peer_index: int) -> str:
        return self.topology.link_class(self.ranks[self.index], self.ranks[peer_index])

    @property
    def backend_order(self) -> tuple[int, ...]:
        """Member indices in the process group's own rank order: torch.distributed sorts a group's
        ranks, which differs from ``ranks`` when a placement interleaves them (e.g. TAS's sp group)."""
        return tuple(sorted(range(self.size), key=lambda i: self.ranks[i]))


@dataclass(frozen=True)
class Placement:
    """Where each (data, cfg, pipefusion, ring, ulysses) coordinate lives, for one layout."""

    config: ParallelConfig
    layout: str

    def __post_init__(self) -> None:
        if self.layout not in PHYSICAL_ORDER:
            raise ValueError(f"layout must be one of {', '.join(PHYSICAL_ORDER)}, got {self.layout!r}")

    def size(self, axis: str) -> int:
        return getattr(self.config, f"{axis}_degree")

    def rank_of(self, coords: dict[str, int]) -> int:
        rank = 0
        for axis in PHYSICAL_ORDER[self.layout]:
            rank = rank * self.size(axis) + coords[axis]
        return rank

    def coords_of(self, rank: int) -> dict[str, int]:
        coords = {}
        for axis in reversed(PHYSICAL_ORDER[self.layout]):
            coords[axis] = rank % self.size(axis)
            rank //= self.size(axis)
        return coords

    def groups(self, axes: tuple[str, ...]) -> list[tuple[int, ...]]:
        """Every group varying ``axes`` (members row-major over ``axes`` in the order given), in a
        fixed order that is the same on every rank."""
        others = [a for a in AXES if a not in axes]
        result = []
        for fixed in itertools.product(*(range(self.size(a)) for a in others)):
            base = dict(zip(others, fixed, strict=True))
            result.append(tuple(
                self.rank_of({**base, **dict(zip(axes, moving, strict=True))})
                for moving in itertools.product(*(range(self.size(a)) for a in axes))
            ))
        return result


@dataclass(frozen=True)
class ParallelMesh:
    config: ParallelConfig
    topology: Topology
    layout: str  # the placement in force ("usp" or "tas"; "auto" is resolved before)
    rank: int
    coords: dict[str, int]
    data: Group
    cfg: Group
    batch: Group  # data × cfg: the ranks that split a transformer call's batch between them
    ulysses: Group
    ring: Group
    sp: Group  # Ulysses × Ring, in sp_index order


_MESH_CACHE: dict[tuple, ParallelMesh] = {}


def split_by_node(ranks: tuple[int, ...], topology: Topology) -> list[list[int]]:
    """``ranks`` grouped by node: nodes in order of first appearance, members in the given order."""
    nodes: dict[int, list[int]] = {}
    for r in ranks:
        nodes.setdefault(topology.node_of(r), []).append(r)
    return list(nodes.values())


def build_mesh(config: ParallelConfig, ranks_per_node: int | None = None, layout: str | None = None) -> ParallelMesh:
    """Builds (or returns the cached) mesh for this process. Collective: every rank calls it.
    ``layout`` overrides ``config.sp_layout`` (it must be given when that is ``"auto"``)."""
    world = current_world_size()
    config.check_world_size(world)
    topology = Topology.detect(world, ranks_per_node, config.intra_node_link, config.inter_node_link)
    layout = layout or config.sp_layout
    if layout == "auto":
        raise ValueError("sp_layout='auto' is resolved from the model's shape: pass the model to parallelize()")
    key = (config, topology, layout)
    if key in _MESH_CACHE:
        return _MESH_CACHE[key]
    placement = Placement(config, layout)
    me = current_rank()
    timeout = datetime.timedelta(seconds=config.collective_timeout_s)

    def make(members: tuple[int, ...]) -> Group | None:
        """Creates the process group (every rank must call this for every group, in the same
        order: torch.distributed's rule) and returns this rank's view of it, if a member."""
        pg = dist.new_group(list(members), timeout=timeout) if len(members) > 1 and world > 1 else None
        if me not in members:
            return None
        group = Group(members, members.index(me), topology, pg)
        if config.transport == "one_sided" and pg is not None and len(split_by_node(members, topology)) == 1:
            from .one_sided import transport_for

            transport = transport_for(default_device(), members, group.index, pg, config.collective_timeout_s)
            group = replace(group, one_sided=transport)
        return group

    def group_along(axes: tuple[str, ...]) -> Group:
        mine = [g for g in map(make, placement.groups(axes)) if g is not None]
        return mine[0]

    def ulysses_group() -> Group:
        mine = group_along(("ulysses",))
        if config.all_to_all != "tapa":
            return mine
        node_local = cross_node = None
        for members in placement.groups(("ulysses",)):
            nodes = split_by_node(members, topology)
            if len({len(n) for n in nodes}) > 1:
                raise ValueError(
                    f"all_to_all='tapa' needs the same number of Ulysses ranks on every node; group "
                    f"{members} has {[len(n) for n in nodes]} on its nodes"
                )
            if len(nodes) == 1 or len(nodes[0]) == 1:
                continue  # one node, or one rank per node: the phases would be a flat all-to-all
            for on_node in nodes:
                node_local = make(tuple(on_node)) or node_local
            for same_local_index in zip(*nodes, strict=True):
                cross_node = make(same_local_index) or cross_node
        if node_local is None or cross_node is None:
            return mine
        return replace(mine, node_local=node_local, cross_node=cross_node)

    mesh = ParallelMesh(
        config=config,
        topology=topology,
        layout=layout,
        rank=me,
        coords=placement.coords_of(me),
        data=group_along(("data",)),
        cfg=group_along(("cfg",)),
        batch=group_along(("data", "cfg")),
        ulysses=ulysses_group(),
        ring=group_along(("ring",)),
        sp=group_along(("ring", "ulysses")),
    )
    _MESH_CACHE[key] = mesh
    return mesh
