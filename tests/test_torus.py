"""Torus attention: exact, posts each round's transfers before computing the tiles of the round
before, pushes outputs back, and moves the same bytes as Ulysses."""

import pytest
from test_sequence_parallel import _inputs, _mesh, exactness_case

from swiftfusion import ParallelConfig, comm
from swiftfusion.attention import torus_attention, usp_attention
from swiftfusion.sequence import SequenceShard


@pytest.mark.parametrize("world,ulysses", [(2, 2), (4, 4), (4, 2), (8, 8)])
def test_matches_single_process(worlds, world, ulysses):
    for errors in worlds.get(world).run(exactness_case, ulysses, 1, world, None, dict(sp_algorithm="torus")):
        assert max(errors.values()) <= 1e-4, errors


def schedule_case(world):
    mesh = _mesh(world, 1, world, sp_algorithm="torus")
    q, k, v, _ = _inputs(4, 32, False, seed=4)
    shard = SequenceShard.for_length(32, mesh.sp)
    local = [shard.shard(t, dim=2) for t in (q, k, v)]
    comm.traffic.reset()
    with comm.events.capture() as log:
        torus_attention(*local, mesh.ulysses)
    torus_bytes = comm.traffic.snapshot()
    comm.traffic.reset()
    usp_attention(*local, mesh.ulysses, mesh.ring)
    return list(log), torus_bytes, comm.traffic.snapshot(), mesh.sp.index


def test_transfers_overlap_compute_and_bytes_equal_ulysses(worlds):
    size = 4
    for log, torus_bytes, ulysses_bytes, me in worlds.get(size).run(schedule_case, size):
        for s in range(1, size):  # round s's transfer is in flight while round s - 1 computes
            assert log.index(("torus.post", s)) < log.index(("torus.compute", s - 1))
        assert [name for name, _ in log].count("torus.compute") == size
        pushed = [j for name, j in log if name == "torus.push"]
        assert sorted(pushed) == sorted(set(range(size)) - {me})
        assert torus_bytes == ulysses_bytes


def test_torus_needs_no_ring():
    message = "sp_algorithm='torus' runs over the Ulysses group; ring_degree must be 1, got 2"
    with pytest.raises(ValueError, match=message):
        ParallelConfig(ulysses_degree=2, ring_degree=2, sp_algorithm="torus")
