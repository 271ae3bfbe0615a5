"""Exact sequence-parallel attention: Ulysses, Ring, and USP (Ulysses × Ring).

Every rank of the sequence-parallel group holds an equal-length shard of the tokens (the sharding
helpers pad the sequence to a multiple of the group size and mask the padding keys), in
``sp_index = ring_index * ulysses_degree + ulysses_index`` order.

- Ulysses: one all-to-all turns "all heads, my tokens" into "my heads, the Ulysses group's
  tokens"; heads need not divide by the degree (uneven head splits); a second all-to-all returns
  the output to "all heads, my tokens".
- Ring: K/V blocks rotate around the ring by P2P; the transfer of the next block is posted
  before the current block is computed, and partial results merge exactly through their LSE.
- USP: Ulysses inside, Ring across.

``key_mask`` is the *global* key mask ``[batch, total_tokens]`` of the sequence-parallel group
(replicated on every rank; it is tiny): each algorithm slices the part its keys come from.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import comm
from ..mesh import Group
from .local import local_attention, merge_partials


def head_splits(heads: int, degree: int) -> list[int]:
    """Heads per Ulysses rank: contiguous, as even as possible, the first ones one larger."""
    return [heads // degree + (1 if i < heads % degree else 0) for i in range(degree)]


def ulysses_scatter_heads(x: torch.Tensor, group: Group) -> torch.Tensor:
    """``[..., heads, S, D]`` on each rank -> ``[..., my_heads, group.size * S, D]``.
    Leading dims (e.g. a stacked q/k/v and the batch) travel along."""
    return start_scatter_heads(x, group).wait()


def start_scatter_heads(x: torch.Tensor, group: Group) -> comm.Pending:
    """``ulysses_scatter_heads`` started in the background; ``wait()`` gives its result."""
    if group.size == 1:
        return comm.Pending([], x)
    *lead, heads, seq, dim = x.shape
    splits = head_splits(heads, group.size)
    mine = splits[group.index]
    rows = x.movedim(-3, 0)  # heads first: the exchange splits dim 0

    def to_token_order(received: torch.Tensor) -> torch.Tensor:
        received = received.view(group.size, mine, *lead, seq, dim)
        # [src, my_heads, *lead, S, D] -> [*lead, my_heads, src, S, D]: source order is token order.
        received = received.movedim(0, -3).movedim(0, -4)
        return received.reshape(*lead, mine, group.size * seq, dim)

    return comm.exchange(rows, group, [splits] * group.size).then(to_token_order)  # i sends j j's heads


def ulysses_gather_heads(x: torch.Tensor, group: Group, heads: int) -> torch.Tensor:
    """Inverse of ``ulysses_scatter_heads``: ``[B, my_heads, size*S, D]`` -> ``[B, heads, S, D]``."""
    if group.size == 1:
        return x
    batch, mine, seq_total, dim = x.shape
    seq = seq_total // group.size
    splits = head_splits(heads, group.size)
    rows = x.view(batch, mine, group.size, seq, dim).permute(2, 1, 0, 3, 4)
    rows = rows.reshape(group.size * mine, batch, seq, dim)
    received = comm.exchange(rows, group, [[s] * group.size for s in splits]).wait()  # i sends j i's heads
    return received.permute(1, 0, 2, 3)


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ring: Group,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of the local queries over the keys of the whole ring (exact)."""
    block = k.shape[-2]
    if ring.size == 1:
        return local_attention(q, k, v, _block_mask(key_mask, 0, block), scale)[0]
    kv = torch.stack([k, v])
    out = torch.zeros(q.shape[:-1] + (v.shape[-1],), dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), device=q.device)
    for step in range(ring.size):
        pending = None
        if step < ring.size - 1:
            pending = comm.ring_shift(kv, ring)
            comm.events.record("ring.post", step)
        owner = (ring.index - step) % ring.size  # whose keys ``kv`` holds at this step
        comm.events.record("ring.compute", step)
        block_out, block_lse = local_attention(
            q, kv[0], kv[1], _block_mask(key_mask, owner, block), scale
        )
        out, lse = merge_partials(out, lse, block_out, block_lse)
        if pending is not None:
            kv = pending.wait()
            comm.events.record("ring.wait", step)
    return out.to(q.dtype)


def usp_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ulysses: Group,
    ring: Group,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Ulysses inside, Ring across; with a trivial group it is plain Ring or plain Ulysses."""
    heads = q.shape[1]
    q, k, v = ulysses_scatter_heads(torch.stack([q, k, v]), ulysses).unbind(0)
    out = ring_attention(q, k, v, ring, key_mask, scale)
    return ulysses_gather_heads(out, ulysses, heads)


def usp_attention_v_first(
    v: torch.Tensor,
    project_qk: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    ulysses: Group,
    ring: Group,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """USP with CoCoDiff's V-First: V's all-to-all starts before ``project_qk`` computes Q and K
    (projection, norm, rotary), so that work hides V's transfer. Same result as ``usp_attention``."""
    return usp_attention_v_started(start_scatter_heads(v, ulysses), v.shape[1], project_qk, ulysses, ring,
                                   key_mask, scale)


def usp_attention_v_started(
    scattered_v: comm.Pending,
    heads: int,
    project_qk: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    ulysses: Group,
    ring: Group,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """USP whose V scatter (``start_scatter_heads``) is already in flight; ``heads``: all heads."""
    comm.events.record("v_first.v_posted", 0)
    q, k = project_qk()
    comm.events.record("v_first.qk_ready", 0)
    q, k = ulysses_scatter_heads(torch.stack([q, k]), ulysses).unbind(0)
    out = ring_attention(q, k, scattered_v.wait(), ring, key_mask, scale)
    return ulysses_gather_heads(out, ulysses, heads)


def ulysses_attention(q, k, v, ulysses: Group, key_mask=None, scale=None) -> torch.Tensor:
    return usp_attention(q, k, v, ulysses, _solo(ulysses), key_mask, scale)


def _solo(like: Group) -> Group:
    me = like.ranks[like.index]
    return Group((me,), 0, like.topology, None)


def _block_mask(key_mask: torch.Tensor | None, owner: int, block: int) -> torch.Tensor | None:
    if key_mask is None:
        return None
    return key_mask[:, owner * block : (owner + 1) * block]
