"""Process groups for a ``ParallelConfig`` on a ``Topology``: which rank sits where.

Rank layout (row-major, Ulysses innermost)::

    rank = (((data * cfg_degree + cfg) * pipefusion_degree + stage) * ring_degree + ring) * ulysses_degree + ulysses

so a Ulysses group is consecutive ranks (inside a node whenever ulysses_degree divides the ranks
per node) and Ring groups stride across them. The sequence-parallel group (Ulysses × Ring) holds
the sequence in ``sp_index = ring * ulysses_degree + ulysses`` order. Groups are created once per
(config, topology) and cached: creating groups is collective and slow.
"""

from __future__ import annotations

import datetime
import itertools
from dataclasses import dataclass

import torch.distributed as dist

from .config import ParallelConfig
from .runtime import rank as current_rank
from .runtime import world_size as current_world_size
from .topology import Topology

AXES = ("data", "cfg", "pipefusion", "ring", "ulysses")


@dataclass(frozen=True)
class Group:
    """One process group seen from one of its members."""

    ranks: tuple[int, ...]  # global ranks, in group order
    index: int  # this rank's position in ``ranks``
    topology: Topology
    process_group: object | None  # None when the group has one member

    @property
    def size(self) -> int:
        return len(self.ranks)

    def link_class(self, peer_index: int) -> str:
        return self.topology.link_class(self.ranks[self.index], self.ranks[peer_index])


@dataclass(frozen=True)
class ParallelMesh:
    config: ParallelConfig
    topology: Topology
    rank: int
    coords: dict[str, int]
    data: Group
    cfg: Group
    ulysses: Group
    ring: Group
    sp: Group  # Ulysses × Ring, in sp_index order

    @property
    def is_output_rank(self) -> bool:
        return self.rank == 0


_MESH_CACHE: dict[tuple, ParallelMesh] = {}


def _shape(config: ParallelConfig) -> tuple[int, ...]:
    return (config.data_degree, config.cfg_degree, config.pipefusion_degree,
            config.ring_degree, config.ulysses_degree)


def build_mesh(config: ParallelConfig, ranks_per_node: int | None = None) -> ParallelMesh:
    """Builds (or returns the cached) mesh for this process. Collective: every rank calls it."""
    world = current_world_size()
    config.check_world_size(world)
    topology = Topology.detect(world, ranks_per_node)
    key = (config, topology)
    if key in _MESH_CACHE:
        return _MESH_CACHE[key]
    shape = _shape(config)
    me = current_rank()
    coords = dict(zip(AXES, _unravel(me, shape), strict=True))
    timeout = datetime.timedelta(seconds=config.collective_timeout_s)

    def group_along(axes: tuple[str, ...]) -> Group:
        mine = None
        # Every rank must create every group, in the same order (torch.distributed's rule).
        for fixed in itertools.product(*(range(n) for a, n in zip(AXES, shape, strict=True) if a not in axes)):
            members = _members(shape, axes, fixed)
            pg = None
            if len(members) > 1 and world > 1:
                pg = dist.new_group(list(members), timeout=timeout)
            if me in members:
                mine = Group(members, members.index(me), topology, pg)
        assert mine is not None
        return mine

    mesh = ParallelMesh(
        config=config,
        topology=topology,
        rank=me,
        coords=coords,
        data=group_along(("data",)),
        cfg=group_along(("cfg",)),
        ulysses=group_along(("ulysses",)),
        ring=group_along(("ring",)),
        sp=group_along(("ring", "ulysses")),
    )
    _MESH_CACHE[key] = mesh
    return mesh


def _unravel(index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    coords = []
    for n in reversed(shape):
        coords.append(index % n)
        index //= n
    return tuple(reversed(coords))


def _ravel(coords: tuple[int, ...], shape: tuple[int, ...]) -> int:
    index = 0
    for c, n in zip(coords, shape, strict=True):
        index = index * n + c
    return index


def _members(shape: tuple[int, ...], axes: tuple[str, ...], fixed: tuple[int, ...]) -> tuple[int, ...]:
    """Global ranks of the group varying ``axes`` (row-major among them) with other axes ``fixed``."""
    varying = [range(n) for a, n in zip(AXES, shape, strict=True) if a in axes]
    members = []
    for moving in itertools.product(*varying):
        it_fixed, it_moving = iter(fixed), iter(moving)
        coords = tuple(next(it_moving) if a in axes else next(it_fixed) for a in AXES)
        members.append(_ravel(coords, shape))
    return tuple(members)
