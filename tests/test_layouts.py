"""Topology-aware placement (TAS): where Ulysses and Ring groups sit, exactness in every placement,
and the planner's byte model against the bytes actually sent."""

import pytest
import torch
from test_sequence_parallel import _inputs, _mesh, exactness_case

from swiftfusion import Link, ParallelConfig, Topology, comm, parallelize
from swiftfusion.attention import usp_attention
from swiftfusion.mesh import Placement
from swiftfusion.planner import attention_messages_and_bytes, attention_traffic, choose_layout
from swiftfusion.sequence import SequenceShard


def test_placements_on_two_nodes_of_two():
    config = ParallelConfig(ulysses_degree=2, ring_degree=2)
    usp, tas = Placement(config, "usp"), Placement(config, "tas")
    assert usp.groups(("ulysses",)) == [(0, 1), (2, 3)] and usp.groups(("ring",)) == [(0, 2), (1, 3)]
    assert tas.groups(("ulysses",)) == [(0, 2), (1, 3)] and tas.groups(("ring",)) == [(0, 1), (2, 3)]
    # The sequence order inside the sp group is (ring, ulysses) whatever the placement.
    assert usp.groups(("ring", "ulysses")) == [(0, 1, 2, 3)]
    assert tas.groups(("ring", "ulysses")) == [(0, 2, 1, 3)]
    assert all(tas.rank_of(tas.coords_of(r)) == r for r in range(4))


def test_unknown_layout_is_named():
    with pytest.raises(ValueError, match="sp_layout must be one of usp, tas, auto, got 'ring-first'"):
        ParallelConfig(sp_layout="ring-first")


@pytest.mark.parametrize("world,ulysses,ring", [(4, 2, 2), (8, 2, 2), (8, 4, 2), (8, 2, 4)])
def test_tas_matches_single_process(worlds, world, ulysses, ring):
    for errors in worlds.get(world).run(exactness_case, ulysses, ring, world, None, dict(sp_layout="tas")):
        assert max(errors.values()) <= 1e-4, errors


def counted_case(ulysses, ring, world, ranks_per_node, layout, heads, seq, all_to_all):
    mesh = _mesh(ulysses, ring, world, ranks_per_node, sp_layout=layout, all_to_all=all_to_all)
    q, k, v, _ = _inputs(heads, seq, False, seed=2)
    shard = SequenceShard.for_length(seq, mesh.sp)
    local = [shard.shard(t, dim=2) for t in (q, k, v)]
    comm.traffic.reset()
    usp_attention(*local, mesh.ulysses, mesh.ring, shard.key_mask(q.shape[0], q.device))
    return comm.traffic.snapshot(), dict(comm.traffic.messages)


@pytest.mark.parametrize("all_to_all", ["flat", "tapa"])
@pytest.mark.parametrize("layout", ["usp", "tas"])
@pytest.mark.parametrize("world,ulysses,ring", [(4, 2, 2), (8, 4, 2), (8, 2, 4), (8, 2, 2), (8, 8, 1)])
@pytest.mark.parametrize("heads,seq", [(4, 32), (3, 13)])  # the second: uneven heads and padding
def test_counted_bytes_equal_the_model(worlds, all_to_all, layout, world, ulysses, ring, heads, seq):
    ranks_per_node = 2
    counted = worlds.get(world).run(counted_case, ulysses, ring, world, ranks_per_node, layout, heads, seq,
                                    all_to_all)
    sent, messages = ({link: sum(c[kind][link] for c in counted) for link in ("intra", "inter")} for kind in (0, 1))
    config = ParallelConfig(data_degree=world // (ulysses * ring), ulysses_degree=ulysses, ring_degree=ring,
                            all_to_all=all_to_all)
    model = attention_messages_and_bytes(config, Topology(world, ranks_per_node), layout,
                                         batch=2, heads=heads, tokens=seq, head_dim=8)
    assert sent == model.bytes and messages == model.messages


def test_ulysses_across_nodes_beats_ring_across_beyond_two_nodes():
    def inter(nodes, layout, ulysses, ring):
        config = ParallelConfig(ulysses_degree=ulysses, ring_degree=ring)
        topology = Topology(ulysses * ring, ulysses * ring // nodes)
        return attention_traffic(config, topology, layout, batch=1, heads=8, tokens=64, head_dim=8)["inter"]

    # Two nodes of two: Ulysses across (tas) and Ring across (usp) move the same inter-node bytes.
    assert inter(2, "tas", 2, 2) == inter(2, "usp", 2, 2)
    # N nodes of two ranks with U = N: Ulysses across moves N/2 times fewer than Ring across (R = N).
    for nodes in (4, 8):
        assert inter(nodes, "usp", 2, nodes) == nodes / 2 * inter(nodes, "tas", nodes, 2)
    config = ParallelConfig(ulysses_degree=4, ring_degree=2)
    assert choose_layout(config, Topology(8, 2), heads=8, head_dim=8) == "tas"
    assert choose_layout(ParallelConfig(ulysses_degree=2, ring_degree=2), Topology(4, 2), 8, 8) == "usp"


def test_layout_choice_weighs_latency_against_bytes():
    # 4 nodes of 2, U=4 × R=2: Ulysses across (tas) moves fewer inter-node bytes than usp (whose
    # Ulysses groups span two nodes and whose Ring goes across), in more messages.
    config = ParallelConfig(ulysses_degree=4, ring_degree=2)
    tas = attention_messages_and_bytes(config, Topology(8, 2), "tas", batch=1, heads=8, tokens=64, head_dim=8)
    usp = attention_messages_and_bytes(config, Topology(8, 2), "usp", batch=1, heads=8, tokens=64, head_dim=8)
    assert (tas.bytes["inter"], tas.messages["inter"]) == (49152, 48)
    assert (usp.bytes["inter"], usp.messages["inter"]) == (65536, 40)
    slow_start = Topology(8, 2, inter=Link(400, 100))
    assert choose_layout(config, slow_start, heads=8, head_dim=8, tokens=64) == "usp"  # latency-bound
    assert choose_layout(config, slow_start, heads=8, head_dim=8, tokens=1 << 20) == "tas"  # bandwidth-bound


def auto_case(folder, ranks_per_node):
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel.from_pretrained(folder, low_cpu_mem_usage=False).eval()
    x = torch.randn(1, 2, 10, 10, generator=torch.Generator().manual_seed(0))
    t, y = torch.tensor([300.0]), torch.tensor([2])
    with torch.no_grad():
        expected = model(x, t, y).sample
        config = ParallelConfig(ulysses_degree=4, ring_degree=2, sp_layout="auto", collective_timeout_s=30)
        parallelize(model, config, ranks_per_node=ranks_per_node)
        actual = model(x, t, y).sample
    return model._swiftfusion_mesh.layout, float((actual - expected).abs().max())


def test_auto_layout_picks_tas_on_four_nodes(worlds, tiny_dit_folder):
    for layout, error in worlds.get(8).run(auto_case, tiny_dit_folder, 2):
        assert layout == "tas" and error < 1e-5


def interleaved_exchange_case():
    mesh = _mesh(2, 2, 4, 2, sp_layout="tas")  # sp group members in order (0, 2, 1, 3): not sorted
    me = mesh.sp.index
    # Member i sends i+1 rows to member j, each row holding (sender, receiver).
    rows = torch.cat([torch.tensor([[me, j]] * (j + 1)) for j in range(4)])
    received = comm.all_to_all(rows, mesh.sp, [j + 1 for j in range(4)], [me + 1] * 4).wait()
    gathered = comm.all_gather(torch.tensor([me]), mesh.sp)
    return received.tolist(), gathered.tolist()


def test_collectives_follow_member_order_not_rank_order(worlds):
    for me, (received, gathered) in enumerate([r for r in worlds.get(4).run(interleaved_exchange_case)]):
        sp_index = (0, 2, 1, 3).index(me)
        assert received == [[sender, sp_index] for sender in range(4) for _ in range(sp_index + 1)]
        assert gathered == [0, 1, 2, 3]
