"""The one-sided transport: shared-memory puts and flags between the ranks of one node, exact,
counted like the collective transport, and leaving no shared memory behind."""

import os

import pytest
import torch
from test_sequence_parallel import _mesh, exactness_case

from swiftfusion import comm, one_sided


@pytest.mark.parametrize(
    "world,ulysses,ring,ranks_per_node,options",
    [
        (2, 2, 1, None, {}), (4, 4, 1, None, {}), (4, 1, 4, None, {}), (4, 2, 2, None, {}),
        (4, 2, 2, None, dict(v_first=True)),
        (4, 4, 1, 2, dict(all_to_all="tapa", v_first=True)),
        (4, 2, 2, 2, {}),  # Ulysses inside the nodes (one-sided), Ring across (collective)
        (4, 4, 1, 2, dict(all_to_all="tapa")),  # TAPA: phase 1 one-sided, phase 2 collective
        (8, 4, 2, 4, dict(sp_layout="tas")),  # Ring inside the nodes (one-sided), Ulysses across
    ],
)
def test_matches_single_process(worlds, world, ulysses, ring, ranks_per_node, options):
    options = dict(options, transport="one_sided")
    for errors in worlds.get(world).run(exactness_case, ulysses, ring, world, ranks_per_node, options):
        assert max(errors.values()) <= 1e-4, errors


def repeated_exchange_case():
    mesh = _mesh(4, 1, 4, transport="one_sided")
    group = mesh.ulysses
    assert group.one_sided is not None
    g = torch.Generator().manual_seed(3)
    me = group.index
    results = []
    for width in (2, 2, 50, 3, 4000, 1):  # growing and shrinking messages: capacity grows
        rows = torch.randint(0, 5, (4, 4), generator=g).tolist()
        x = torch.cat([torch.full((rows[me][j], width), 1000.0 * me + j) for j in range(4)])
        comm.traffic.reset()
        put = comm.exchange(x, group, rows).wait()
        counted = comm.traffic.snapshot()
        expected = comm.all_to_all(x, group, rows[me], [rows[i][me] for i in range(4)]).wait()
        results.append((torch.equal(put, expected), counted["intra"] == (x.numel() - rows[me][me] * width) * 4))
    segment = group.one_sided.own_path
    return results, segment


def in_flight_case():
    mesh = _mesh(4, 1, 4, transport="one_sided")
    group, me = mesh.ulysses, mesh.ulysses.index
    small = torch.full((4, 2), float(me))
    large = torch.full((4, 5000), float(me) + 10)  # needs bigger buffers while ``small`` is in flight
    first = comm.exchange(small, group, [[1] * 4] * 4)
    second = comm.exchange(large, group, [[1] * 4] * 4)
    got_second, got_first = second.wait(), first.wait()  # finished out of order, as V-First does
    in_flight = [comm.exchange(small, group, [[1] * 4] * 4) for _ in range(one_sided.BUFFERS)]
    try:
        comm.exchange(small, group, [[1] * 4] * 4)
        too_many = None
    except RuntimeError as error:
        too_many = str(error)
    for pending in in_flight:
        pending.wait()
    return got_first[:, 0].tolist(), got_second[:, 0].tolist(), too_many


def test_two_exchanges_in_flight(worlds):
    for first, second, too_many in worlds.get(4).run(in_flight_case):
        assert first == [0.0, 1.0, 2.0, 3.0] and second == [10.0, 11.0, 12.0, 13.0]
        assert too_many == f"more than {one_sided.BUFFERS} one-sided exchanges in flight on one group"


def test_repeated_exchanges_equal_the_collective_and_clean_up(worlds):
    for results, segment in worlds.get(4).run(repeated_exchange_case):
        assert results == [(True, True)] * 6
        # Unlinked as soon as every member had mapped it: nothing is left even if a rank is killed.
        assert segment.startswith("/dev/shm/swiftfusion-") and not os.path.exists(segment)


def test_groups_across_nodes_stay_collective():
    from swiftfusion import ParallelConfig

    assert ParallelConfig(transport="one_sided").transport == "one_sided"
    with pytest.raises(ValueError, match="transport must be one of collective, one_sided, got 'rdma'"):
        ParallelConfig(transport="rdma")
