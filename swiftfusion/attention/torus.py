"""Torus attention (StreamFusion): head-parallel attention over a group whose all-to-all is split
into Pull-Q, Pull-KV and Push-O transfers that overlap with compute. Exact.

Member i owns heads ``H_i`` (``head_splits``) and computes them for every token. The work is a
grid of (query block j, key block k) tiles, a block being one member's tokens. In round 0 member i
computes tile (i, i) from what it holds. In round s it receives Q, K and V of its heads for the
tokens of member i - s (Pull-Q, Pull-KV) while it sends the same for member i + s, and it
computes the tiles the newly arrived blocks complete: the new query block against every key
block held so far, and every earlier query block against the new key block, merging exactly
through the log-sum-exp. Round s + 1's transfers are posted before round s's compute starts.
When a query block has seen every key block, its output for heads ``H_i`` goes back to the
block's owner (Push-O) while the rest is computed. Moves the same bytes as Ulysses.
"""

from __future__ import annotations

import torch

from .. import comm
from ..mesh import Group
from .local import local_attention, merge_partials
from .sequence_parallel import head_splits

PUSH_O_TAG = 1  # Push-O messages match among themselves, whatever the order of the rounds

def torus_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: Group,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """``q, k, v``: ``[batch, heads, tokens, dim]`` for this member's tokens (equal-length
    blocks); ``key_mask``: the global ``[batch, size * tokens]`` key mask. Returns this member's
    tokens with all heads, as single-process attention over all tokens would."""
    size, me = group.size, group.index
    if size == 1:
        return local_attention(q, k, v, key_mask, scale)[0]
    batch, heads, tokens, dim = q.shape
    splits = head_splits(heads, size)
    starts = [sum(splits[:i]) for i in range(size)]

    def my_heads_of(x: torch.Tensor, member: int) -> torch.Tensor:
        return x[:, starts[member] : starts[member] + splits[member]]

    mine = splits[me]
    qkv_of: dict[int, torch.Tensor] = {me: torch.stack([my_heads_of(t, me) for t in (q, k, v)])}

    def post_round(s: int) -> comm.Pending:
        to, frm = (me + s) % size, (me - s) % size
        outgoing = torch.stack([my_heads_of(t, to) for t in (q, k, v)])
        incoming = q.new_empty((3, batch, mine, tokens, dim))
        return comm.send_recv(outgoing, to, incoming, frm, group)

    out: dict[int, torch.Tensor] = {}
    lse: dict[int, torch.Tensor] = {}

    def tile(j: int, kb: int) -> None:
        """Query block j (tokens of member j) against key block kb, merged into j's running result."""
        mask = None if key_mask is None else key_mask[:, kb * tokens : (kb + 1) * tokens]
        block_out, block_lse = local_attention(qkv_of[j][0], qkv_of[kb][1], qkv_of[kb][2], mask, scale)
        if j not in out:
            out[j] = torch.zeros(block_out.shape, dtype=torch.float32, device=q.device)
            lse[j] = torch.full(block_lse.shape, float("-inf"), device=q.device)
        out[j], lse[j] = merge_partials(out[j], lse[j], block_out, block_lse)

    # Push-O: each member's output block goes back as soon as it is complete. The receives are
    # posted first (own tag), so that a push moves as soon as it is sent.
    received_o = [q.new_empty((batch, splits[src], tokens, dim)) for src in range(size)]
    receives = [comm.send_recv(None, None, received_o[src], src, group, PUSH_O_TAG)
                for src in range(size) if src != me]
    pushes = []

    def push(j: int) -> None:
        block = out[j].to(q.dtype)
        if j == me:
            received_o[me] = block
            return
        pushes.append(comm.send_recv(block, j, None, None, group, PUSH_O_TAG))
        comm.events.record("torus.push", j)

    arrived = [me]
    pending = post_round(1)
    comm.events.record("torus.post", 1)
    comm.events.record("torus.compute", 0)
    tile(me, me)
    for s in range(1, size):
        new = (me - s) % size
        qkv_of[new] = pending.wait()
        if s + 1 < size:
            pending = post_round(s + 1)
            comm.events.record("torus.post", s + 1)
        comm.events.record("torus.compute", s)
        last = s == size - 1
        for kb in [*arrived, new]:  # the new query block against every key block so far
            tile(new, kb)
        if last:  # complete: its push overlaps the tiles below
            push(new)
        for j in arrived:  # earlier query blocks against the new key block
            tile(j, new)
            if last:
                push(j)
        arrived.append(new)
    for transfer in receives + pushes:  # every member's heads for my tokens, and my pushes
        transfer.wait()
    return torch.cat(received_o, dim=1)
