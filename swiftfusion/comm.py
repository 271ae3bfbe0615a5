"""Moving bytes between ranks of a ``Group``: all-to-all (even or uneven), ring shifts for P2P
rotation, all-gather (of tensors, and of small picklable objects). Every operation has a timeout
(a stuck peer raises instead of hanging) and is counted: ``traffic`` holds the bytes this process
sent per link class (``intra`` / ``inter``; gathers over the whole world, which has no topology
at hand, are not), and ``events`` can record the order in which transfers are posted and awaited,
so tests can see that communication is overlapped with compute. Knows nothing about attention.
"""

from __future__ import annotations

import datetime
import math
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist

from .mesh import Group, split_by_node
from .runtime import default_device
from .topology import LINK_CLASSES

DEFAULT_TIMEOUT_S = 300.0


class TrafficCounter:
    """Bytes sent by this process, per link class (what left this rank towards each peer)."""

    def __init__(self) -> None:
        self.reset()

    def add(self, group: Group, peer_index: int, nbytes: int) -> None:
        if peer_index != group.index and nbytes:
            link = group.link_class(peer_index)
            self.bytes[link] += int(nbytes)
            self.messages[link] += 1

    def reset(self) -> None:
        self.bytes = dict.fromkeys(LINK_CLASSES, 0)
        self.messages = dict.fromkeys(LINK_CLASSES, 0)  # non-empty sends to a peer

    def snapshot(self) -> dict[str, int]:
        return dict(self.bytes)


class EventLog:
    """An ordered record of communication and compute events, kept only while capturing."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, int]] | None = None

    def record(self, name: str, step: int) -> None:
        if self.entries is not None:
            self.entries.append((name, step))

    @contextmanager
    def capture(self) -> Iterator[list[tuple[str, int]]]:
        self.entries = []
        try:
            yield self.entries
        finally:
            self.entries = None


traffic = TrafficCounter()
events = EventLog()
_timeout = datetime.timedelta(seconds=DEFAULT_TIMEOUT_S)


def set_timeout(seconds: float) -> None:
    """The deadline for waiting on any transfer (the process groups carry the same timeout)."""
    global _timeout
    _timeout = datetime.timedelta(seconds=seconds)


class Pending:
    """A transfer in flight; ``wait()`` returns its result or raises after the timeout."""

    def __init__(self, works: Sequence, result: torch.Tensor) -> None:
        self._works = works
        self._result = result

    def wait(self) -> torch.Tensor:
        for work in self._works:
            work.wait(timeout=_timeout)
        return self._result

    def then(self, finish: Callable[[torch.Tensor], torch.Tensor]) -> Pending:
        """A transfer whose ``wait()`` returns ``finish`` applied to this one's result."""
        return _Then(self, finish)


class _Then(Pending):
    def __init__(self, first: Pending, finish: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._first, self._finish = first, finish

    def wait(self) -> torch.Tensor:
        return self._finish(self._first.wait())


def all_to_all(
    x: torch.Tensor,
    group: Group,
    input_splits: Sequence[int] | None = None,
    output_splits: Sequence[int] | None = None,
) -> Pending:
    """Exchanges slices of dim 0: rows ``input_splits[j]`` go to member j, and rows from member j
    arrive in order. Equal splits when not given. Starts the transfer and returns at once."""
    x = x.contiguous()
    if input_splits is None:
        input_splits = [x.shape[0] // group.size] * group.size
    if output_splits is None:
        output_splits = list(input_splits)
    out = x.new_empty((sum(output_splits), *x.shape[1:]))
    if group.size == 1:
        out.copy_(x)
        return Pending([], out)
    row_bytes = math.prod(x.shape[1:]) * x.element_size()
    for peer, rows in enumerate(input_splits):
        traffic.add(group, peer, rows * row_bytes)
    order = group.backend_order
    if order == tuple(range(group.size)):
        work = dist.all_to_all_single(
            out, x, list(output_splits), list(input_splits), group=group.process_group, async_op=True
        )
        return Pending([work], out)
    # The process group orders members by global rank: send and receive in that order.
    x = torch.cat([x.split(list(input_splits))[i] for i in order])
    input_splits = [input_splits[i] for i in order]
    output_splits = [output_splits[i] for i in order]
    out = x.new_empty((sum(output_splits), *x.shape[1:]))
    work = dist.all_to_all_single(out, x, output_splits, input_splits, group=group.process_group, async_op=True)

    def to_member_order(received: torch.Tensor) -> torch.Tensor:
        by_member = dict(zip(order, received.split(output_splits), strict=True))
        return torch.cat([by_member[i] for i in range(group.size)])

    return Pending([work], out).then(to_member_order)


SplitMatrix = Sequence[Sequence[int]]  # rows[i][j]: dim-0 rows member i sends to member j


def exchange(x: torch.Tensor, group: Group, rows: SplitMatrix) -> Pending:
    """All-to-all where every member knows the whole split matrix; the rows for member j are
    contiguous in ``x`` in member order, and the result holds the rows from member i in member
    order. Runs as TAPA (two topology-aligned phases) when the group was built with node-local
    and cross-node subgroups, else as one flat all-to-all. Starts it and returns at once."""
    if group.node_local is not None and group.cross_node is not None:
        return tapa_all_to_all(x, group, rows)
    if group.one_sided is not None:
        return _one_sided(x, group, rows)
    me = group.index
    return all_to_all(x, group, list(rows[me]), [rows[i][me] for i in range(group.size)])


def _one_sided(x: torch.Tensor, group: Group, rows: SplitMatrix) -> Pending:
    """Puts now (shared-memory writes); ``wait()`` waits for the peers' flags and copies out."""
    row_bytes = math.prod(x.shape[1:]) * x.element_size()
    for peer in range(group.size):
        traffic.add(group, peer, rows[group.index][peer] * row_bytes)
    finish = group.one_sided.start(x, [list(r) for r in rows])
    return Pending([], x).then(lambda _: finish())


TAPA_CHUNKS = 2  # pieces of the payload pipelined through TAPA's two phases


def tapa_all_to_all(x: torch.Tensor, group: Group, rows: SplitMatrix) -> Pending:
    """Topology-aligned phased all-to-all (CoCoDiff's TAPA), exactly equal to the flat one.

    Member (node n, local m) first sends each node-local peer m' everything bound for members
    with local index m' on any node (phase 1, fast links), then each member sends each peer with
    the same local index on another node one bundle of what its node holds for that peer
    (phase 2, slow links): inter-node messages are ranks-per-node times larger than the flat
    all-to-all's. The payload (the trailing dims) is cut into ``TAPA_CHUNKS`` pieces that run
    as a pipeline: every piece's phase 1 is posted at once, and a piece's phase 2 is posted as
    soon as its phase 1 has arrived, so the inter-node phase of one piece runs while the
    intra-node phase of the next is still moving, on disjoint links.
    """
    local, cross = group.node_local, group.cross_node
    # member[n][m]: group index of the member with node-local index m on the group's n-th node.
    index = {rank: i for i, rank in enumerate(group.ranks)}
    member = [[index[rank] for rank in on_node] for on_node in split_by_node(group.ranks, group.topology)]
    me, n_me, m_me = group.index, cross.index, local.index
    nodes, per_node = range(cross.size), range(local.size)
    flat = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # a member with no heads has 0 rows
    pieces = flat.tensor_split(max(1, min(TAPA_CHUNKS, flat.shape[1])), dim=1)

    # Phase 1 (intra-node): to local peer m2, my chunks for (n, m2) for every node n.
    local_rows = [[sum(rows[member[n_me][m]][member[n][m2]] for n in nodes) for m2 in per_node] for m in per_node]
    phase_one = []
    for piece in pieces:
        chunks = piece.split([rows[me][j] for j in range(group.size)])
        send = torch.cat([chunks[member[n][m2]] for m2 in per_node for n in nodes])
        phase_one.append(exchange(send, local, local_rows))
        events.record("tapa.phase_one.post", len(phase_one) - 1)

    # Phase 2 (inter-node): to the peer (n, m_me), what this node holds for it, local sources in order.
    held = [rows[member[n_me][m]][member[n][m_me]] for m in per_node for n in nodes]  # as phase 1 delivers
    in_splits = [sum(rows[member[n_me][m]][member[n][m_me]] for m in per_node) for n in nodes]
    out_splits = [sum(rows[member[n][m]][me] for m in per_node) for n in nodes]

    def start_phase_two(got: torch.Tensor) -> Pending:
        by_key = dict(zip([(m, n) for m in per_node for n in nodes], got.split(held), strict=True))
        return all_to_all(torch.cat([by_key[(m, n)] for n in nodes for m in per_node]), cross, in_splits, out_splits)

    def finish(_: torch.Tensor) -> torch.Tensor:
        phase_two = []
        for c, pending in enumerate(phase_one):
            got = pending.wait()
            events.record("tapa.phase_one.arrived", c)
            phase_two.append(start_phase_two(got))
            events.record("tapa.phase_two.post", c)
        sizes = [rows[member[n][m]][me] for n in nodes for m in per_node]
        sources = [member[n][m] for n in nodes for m in per_node]
        received = []
        for pending in phase_two:
            by_source = dict(zip(sources, pending.wait().split(sizes), strict=True))
            received.append(torch.cat([by_source[i] for i in range(group.size)]))
        total = sum(rows[i][me] for i in range(group.size))
        return torch.cat(received, dim=1).view(total, *x.shape[1:])

    return Pending([], x).then(finish)


def ring_shift(x: torch.Tensor, group: Group) -> Pending:
    """Sends ``x`` to the next member and receives the previous member's tensor (same shape)."""
    if group.one_sided is not None:
        n = x.shape[0]
        rows = [[n if j == (i + 1) % group.size else 0 for j in range(group.size)] for i in range(group.size)]
        return _one_sided(x, group, rows)
    x = x.contiguous()
    received = torch.empty_like(x)
    nxt = (group.index + 1) % group.size
    prev = (group.index - 1) % group.size
    traffic.add(group, nxt, x.numel() * x.element_size())
    ops = [
        dist.P2POp(dist.isend, x, group.ranks[nxt], group.process_group),
        dist.P2POp(dist.irecv, received, group.ranks[prev], group.process_group),
    ]
    return Pending(dist.batch_isend_irecv(ops), received)


def send_recv(x: torch.Tensor | None, to_index: int | None, into: torch.Tensor | None,
              from_index: int | None, group: Group, tag: int = 0) -> Pending:
    """Sends ``x`` to member ``to_index`` and receives member ``from_index``'s tensor into
    ``into`` (either side may be None); returns at once, ``wait()`` gives ``into``. Messages
    between two members match in order within a ``tag``."""
    ops = []
    if x is not None:
        x = x.contiguous()
        traffic.add(group, to_index, x.numel() * x.element_size())
        ops.append(dist.P2POp(dist.isend, x, group.ranks[to_index], group.process_group, tag))
    if into is not None:
        ops.append(dist.P2POp(dist.irecv, into, group.ranks[from_index], group.process_group, tag))
    return Pending(dist.batch_isend_irecv(ops) if ops else [], into)


def all_gather(x: torch.Tensor, group: Group, dim: int = 0) -> torch.Tensor:
    """Concatenates every member's ``x`` (same shape on all) along ``dim``, in group order."""
    if group.size == 1:
        return x
    return torch.cat(_gather_parts(x.contiguous(), group), dim=dim)


def _gather_parts(x: torch.Tensor, group: Group | None) -> list[torch.Tensor]:
    """Every member's ``x`` (same shape on all), in group order; ``None``: the whole world, in
    rank order. Waits at most the timeout."""
    pg = None if group is None else group.process_group  # None: torch.distributed's default (world) group
    size = dist.get_world_size() if group is None else group.size
    parts = [torch.empty_like(x) for _ in range(size)]
    if group is not None:  # the world has no topology at hand to name link classes: not counted
        for peer in range(size):
            traffic.add(group, peer, x.numel() * x.element_size())
    Pending([dist.all_gather(parts, x, group=pg, async_op=True)], x).wait()
    order = range(size) if group is None else group.backend_order
    by_member = dict(zip(order, parts, strict=True))
    return [by_member[i] for i in range(size)]


def all_gather_object(obj: object, group: Group | None = None) -> list:
    """Every member's picklable ``obj`` (of any size), in group order; ``group=None``: every rank
    of the world, in rank order. Meant for small control messages (two tiny collectives: sizes,
    then the padded pickles). Unlike ``torch.distributed.all_gather_object`` it waits at most the
    timeout, like every transfer here. Every member must call it."""
    if (group.size if group is not None else dist.get_world_size() if dist.is_initialized() else 1) == 1:
        return [obj]
    device = default_device()  # the backend was chosen for it (NCCL moves only CUDA tensors)
    payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(device)
    sizes = [int(n) for n in _gather_parts(torch.tensor([payload.numel()], device=device), group)]
    padded = torch.zeros(max(sizes), dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload
    parts = _gather_parts(padded, group)
    return [pickle.loads(part[:n].cpu().numpy().tobytes()) for part, n in zip(parts, sizes, strict=True)]
