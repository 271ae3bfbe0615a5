"""TAPA: the all-to-all in two topology-aligned phases equals the flat one, moves the same bytes
across nodes in fewer, larger messages, and keeps attention exact."""

import pytest
import torch
from test_sequence_parallel import _mesh, exactness_case

from swiftfusion import comm


def exchange_case(world, ulysses, ring, ranks_per_node, layout):
    mesh = _mesh(ulysses, ring, world, ranks_per_node, sp_layout=layout, all_to_all="tapa")
    group = mesh.ulysses
    size = group.size
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, 4, (size, size), generator=g).tolist()  # uneven, some empty
    me = group.index
    x = torch.cat([torch.full((rows[me][j], 3), 100.0 * me + j) for j in range(size)])
    comm.traffic.reset()
    phased = comm.exchange(x, group, rows).wait()
    phased_traffic = (comm.traffic.snapshot(), dict(comm.traffic.messages))
    expected = comm.all_to_all(x, group, rows[me], [rows[i][me] for i in range(size)]).wait()
    return group.node_local is not None, torch.equal(phased, expected), phased_traffic


@pytest.mark.parametrize(
    "world,ulysses,ring,ranks_per_node,layout",
    [(4, 4, 1, 2, "usp"), (8, 8, 1, 2, "usp"), (8, 8, 1, 4, "usp"), (8, 4, 2, 2, "usp"), (8, 4, 2, 4, "tas")],
)
def test_phased_exchange_equals_flat(worlds, world, ulysses, ring, ranks_per_node, layout):
    for phased_active, equal, _ in worlds.get(world).run(exchange_case, world, ulysses, ring, ranks_per_node, layout):
        assert phased_active and equal


def traffic_case(world, ranks_per_node, all_to_all):
    mesh = _mesh(world, 1, world, ranks_per_node, all_to_all=all_to_all)
    x = torch.randn(world * 4, 16)
    comm.traffic.reset()
    comm.exchange(x, mesh.ulysses, [[4] * world] * world).wait()
    return comm.traffic.snapshot(), dict(comm.traffic.messages)


@pytest.mark.parametrize("world,ranks_per_node", [(4, 2), (8, 2), (8, 4)])
def test_same_inter_bytes_in_fewer_messages(worlds, world, ranks_per_node):
    flat = worlds.get(world).run(traffic_case, world, ranks_per_node, "flat")
    phased = worlds.get(world).run(traffic_case, world, ranks_per_node, "tapa")
    nodes, per_node = world // ranks_per_node, ranks_per_node
    chunk = 4 * 16 * 4  # bytes for one peer
    for (flat_bytes, flat_messages), (tapa_bytes, tapa_messages) in zip(flat, phased, strict=True):
        assert flat_bytes["inter"] == tapa_bytes["inter"] == (nodes - 1) * per_node * chunk
        assert flat_messages["inter"] == (nodes - 1) * per_node
        # One bundle per remote node and pipelined piece, each per_node / TAPA_CHUNKS times larger.
        assert tapa_messages["inter"] == (nodes - 1) * comm.TAPA_CHUNKS
        # Phase 1 relays what other nodes' members get through local peers: more intra bytes.
        assert tapa_bytes["intra"] == (per_node - 1) * nodes * chunk


@pytest.mark.parametrize("world,ulysses,ring,ranks_per_node", [(4, 4, 1, 2), (8, 8, 1, 2), (8, 4, 2, 2)])
def test_attention_with_tapa_matches_single_process(worlds, world, ulysses, ring, ranks_per_node):
    for errors in worlds.get(world).run(exactness_case, ulysses, ring, world, ranks_per_node, dict(all_to_all="tapa")):
        assert max(errors.values()) <= 1e-4, errors


def pipeline_case(world, ranks_per_node):
    mesh = _mesh(world, 1, world, ranks_per_node, all_to_all="tapa")
    with comm.events.capture() as log:
        comm.exchange(torch.randn(world * 4, 16), mesh.ulysses, [[4] * world] * world).wait()
    return log


def test_phases_are_pipelined(worlds):
    # Piece 0 goes across nodes while piece 1's intra-node phase is still in flight.
    for log in worlds.get(4).run(pipeline_case, 4, 2):
        assert comm.TAPA_CHUNKS == 2 and log == [
            ("tapa.phase_one.post", 0), ("tapa.phase_one.post", 1),
            ("tapa.phase_one.arrived", 0), ("tapa.phase_two.post", 0),
            ("tapa.phase_one.arrived", 1), ("tapa.phase_two.post", 1),
        ]


def test_one_rank_per_node_stays_flat(worlds):
    # TAS with U=2 on nodes of 4: each Ulysses group has one rank per node; phases would add nothing.
    for phased_active, equal, _ in worlds.get(8).run(exchange_case, 8, 2, 4, 4, "tas"):
        assert not phased_active and equal


def test_uneven_nodes_are_rejected(worlds):
    # Ulysses groups (0, 1, 2) and (3, 4, 5) on nodes of two ranks: 2 + 1 and 1 + 2.
    message = r"all_to_all='tapa' needs the same number of Ulysses ranks on every node; group \(0, 1, 2\) has \[2, 1\]"
    with pytest.raises(AssertionError, match=message):
        worlds.get(6).run(exchange_case, 6, 3, 2, 2, "usp")
