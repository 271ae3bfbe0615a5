"""Ulysses, Ring and USP against single-process attention, on real multi-process gloo worlds."""

import itertools

import pytest
import torch
from reference import max_rel_err, sdpa_reference

from swiftfusion import ParallelConfig, comm
from swiftfusion.attention import configured_attention, usp_attention
from swiftfusion.mesh import build_mesh
from swiftfusion.sequence import SequenceShard

BATCH, HEAD_DIM = 2, 8
HEADS = (4, 3, 5)  # 3 and 5 do not divide by 2 or 4 (with Ulysses 4 and 3 heads one rank has none)
SEQS = (16, 13, 7)  # 13 and 7 do not divide by 2, 4 or 8


def _mesh(ulysses, ring, world, ranks_per_node=None, **options):
    """The mesh for U × R sequence parallelism, data parallel over the rest of the world;
    ``options``: further ParallelConfig fields (sp_layout, all_to_all, transport, ...)."""
    sp = ulysses * ring
    config = ParallelConfig(data_degree=world // sp, ulysses_degree=ulysses, ring_degree=ring,
                            collective_timeout_s=30, **options)
    return build_mesh(config, ranks_per_node)


def _inputs(heads, seq, masked, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(BATCH, heads, seq, HEAD_DIM, generator=g) for _ in range(3))
    mask = None
    if masked:  # text-padding style: a prefix of real keys, a different length per batch row
        mask = torch.arange(seq)[None, :] < torch.tensor([seq, max(1, seq // 2)])[:, None]
    return q, k, v, mask


def _sp_forward(mesh, q, k, v, mask):
    shard = SequenceShard.for_length(q.shape[2], mesh.sp)
    key_mask = shard.key_mask(q.shape[0], q.device, mask)
    ql, kl, vl = (shard.shard(t, dim=2) for t in (q, k, v))
    out = configured_attention(mesh, vl, lambda: (ql, kl), key_mask)
    return shard.gather(out, dim=2)


def exactness_case(ulysses, ring, world, ranks_per_node=None, options=None):
    mesh = _mesh(ulysses, ring, world, ranks_per_node, **(options or {}))
    errors = {}
    for heads, seq, masked in itertools.product(HEADS, SEQS, (False, True)):
        # Each data group gets its own inputs: groups run side by side without mixing.
        q, k, v, mask = _inputs(heads, seq, masked, seed=heads * 100 + seq + 7 * mesh.coords["data"])
        out = _sp_forward(mesh, q, k, v, mask)
        errors[(heads, seq, masked)] = max_rel_err(out, sdpa_reference(q, k, v, mask))
    return errors


@pytest.mark.parametrize(
    "world,ulysses,ring",
    [(2, 2, 1), (2, 1, 2), (4, 2, 1), (4, 1, 2), (4, 4, 1), (4, 1, 4), (4, 2, 2), (8, 2, 4), (8, 4, 2)],
)
def test_matches_single_process(worlds, world, ulysses, ring):
    for rank, errors in enumerate(worlds.get(world).run(exactness_case, ulysses, ring, world)):
        bad = {case: err for case, err in errors.items() if not err <= 1e-4}
        assert not bad, f"rank {rank}: (heads, seq, masked) -> max rel err {bad}"
        assert len(errors) == len(HEADS) * len(SEQS) * 2


def bytes_case(ulysses, ring, world, ranks_per_node, heads, seq):
    mesh = _mesh(ulysses, ring, world, ranks_per_node)
    q, k, v, _ = _inputs(heads, seq, False, seed=1)
    shard = SequenceShard.for_length(seq, mesh.sp)
    local = [shard.shard(t, dim=2) for t in (q, k, v)]
    comm.traffic.reset()
    usp_attention(*local, mesh.ulysses, mesh.ring)
    return comm.traffic.snapshot(), local[0].numel() * local[0].element_size()


@pytest.mark.parametrize(
    "world,ulysses,ring,ranks_per_node,expect",
    [
        # Ulysses: 4·(U−1)/U of the local Q/K/V/O shard per layer; Ring: (R−1) K/V shards.
        (2, 2, 1, 2, lambda s, U, R: {"intra": 4 * (U - 1) * s // U, "inter": 0}),
        (2, 2, 1, 1, lambda s, U, R: {"intra": 0, "inter": 4 * (U - 1) * s // U}),
        (4, 4, 1, 4, lambda s, U, R: {"intra": 4 * (U - 1) * s // U, "inter": 0}),
        (2, 1, 2, 1, lambda s, U, R: {"intra": 0, "inter": (R - 1) * 2 * s}),
        (4, 1, 4, 4, lambda s, U, R: {"intra": (R - 1) * 2 * s, "inter": 0}),
        # USP on 2 nodes × 2 ranks: Ulysses inside the node, Ring across.
        (4, 2, 2, 2, lambda s, U, R: {"intra": 4 * (U - 1) * s // U, "inter": (R - 1) * 2 * s}),
    ],
)
def test_bytes_match_formula(worlds, world, ulysses, ring, ranks_per_node, expect):
    results = worlds.get(world).run(bytes_case, ulysses, ring, world, ranks_per_node, 4, 32)
    for counted, shard_bytes in results:
        assert counted == expect(shard_bytes, ulysses, ring)


def overlap_case(world):
    mesh = _mesh(1, world, world)
    q, k, v, _ = _inputs(4, 32, False, seed=3)
    shard = SequenceShard.for_length(32, mesh.sp)
    with comm.events.capture() as log:
        usp_attention(*(shard.shard(t, dim=2) for t in (q, k, v)), mesh.ulysses, mesh.ring)
    return list(log)


def test_ring_posts_next_transfer_before_computing(worlds):
    for log in worlds.get(4).run(overlap_case, 4):
        for step in range(4):
            compute = log.index(("ring.compute", step))
            if step < 3:  # the last block has nothing left to fetch
                assert log.index(("ring.post", step)) < compute < log.index(("ring.wait", step))
            else:
                assert ("ring.post", step) not in log
        assert [name for name, _ in log].count("ring.compute") == 4
