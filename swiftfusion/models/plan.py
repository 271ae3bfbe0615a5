"""Declarative sequence-parallel plans for diffusers transformers, and the hooks that apply them.

A plan says where the token sequence is split (the input of the first block), where it is joined
(the output of the last block) and which attention modules see sharded tokens. The model's own
forward runs unchanged; forward hooks shard and gather, and ``SequenceParallelAttnProcessor``
replaces the self-attention processors so that attention spans the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import configured_attention
from ..mesh import ParallelMesh
from ..sequence import SequenceShard


@dataclass(frozen=True)
class SequenceParallelPlan:
    blocks: str  # attribute holding the ModuleList of blocks that run on sharded tokens
    self_attention: tuple[str, ...]  # attention modules inside each block whose keys are the tokens
    seq_dim: int = 1  # token dimension of the blocks' hidden states


PLANS: dict[str, SequenceParallelPlan] = {
    "DiTTransformer2DModel": SequenceParallelPlan(blocks="transformer_blocks", self_attention=("attn1",)),
}


class _ShardState:
    """The current forward's shard and key mask, shared by the hooks and the processors."""

    shard: SequenceShard | None = None
    key_mask: torch.Tensor | None = None


class SequenceParallelAttnProcessor:
    """Self-attention over the full sequence from token shards (diffusers' AttnProcessor2_0
    semantics, with the attention itself done by USP). Cross-attention, whose keys are not
    sharded, goes to the processor the module had before: it is exact on a shard of queries."""

    def __init__(self, mesh: ParallelMesh, state: _ShardState, previous) -> None:
        self.mesh = mesh
        self.state = state
        self.previous = previous

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None:
            return self.previous(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if attention_mask is not None or attn.spatial_norm is not None or attn.group_norm is not None:
            raise NotImplementedError(
                "sequence-parallel self-attention supports no attention_mask, spatial_norm or "
                "group_norm on this module yet"
            )
        if hidden_states.ndim != 3:
            raise NotImplementedError(f"expected [batch, tokens, dim] hidden states, got {tuple(hidden_states.shape)}")
        residual = hidden_states
        batch = hidden_states.shape[0]
        head_dim = attn.inner_dim // attn.heads

        def heads_first(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        def project_qk() -> tuple[torch.Tensor, torch.Tensor]:
            q, k = heads_first(attn.to_q(hidden_states)), heads_first(attn.to_k(hidden_states))
            if attn.norm_q is not None:
                q = attn.norm_q(q)
            if attn.norm_k is not None:
                k = attn.norm_k(k)
            return q, k

        v = heads_first(attn.to_v(hidden_states))  # first: V-First may start its transfer now
        out = configured_attention(self.mesh, v, project_qk, self.state.key_mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(hidden_states.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def attention_shape(model: torch.nn.Module) -> tuple[int, int]:
    """(heads, head_dim) of the model's sequence-parallel attention, read from its first block."""
    plan = plan_for(model)
    attn = getattr(getattr(model, plan.blocks)[0], plan.self_attention[0])
    return attn.heads, attn.inner_dim // attn.heads


def plan_for(model: torch.nn.Module) -> SequenceParallelPlan:
    name = type(model).__name__
    if name not in PLANS:
        raise ValueError(
            f"no sequence-parallel plan for {name}; supported: {', '.join(sorted(PLANS))}"
        )
    return PLANS[name]


def apply_sequence_parallel(model: torch.nn.Module, mesh: ParallelMesh) -> torch.nn.Module:
    """Makes ``model`` compute its forward with its tokens split over ``mesh.sp``. Every rank of
    the sequence-parallel group passes the same full inputs and gets the same full output."""
    plan = plan_for(model)
    if getattr(model, "_swiftfusion_mesh", None) is not None:
        raise ValueError(f"{type(model).__name__} is already parallelized")
    model._swiftfusion_mesh = mesh
    if mesh.sp.size == 1:
        return model
    blocks = getattr(model, plan.blocks)
    state = _ShardState()
    dim = plan.seq_dim

    def shard_input(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        state.shard = SequenceShard.for_length(hidden.shape[dim], mesh.sp)
        state.key_mask = state.shard.key_mask(hidden.shape[0], hidden.device)
        local = state.shard.shard(hidden, dim)
        if args:
            return (local, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": local}

    def gather_output(module, args, kwargs, output):
        return state.shard.gather(output, dim)

    blocks[0].register_forward_pre_hook(shard_input, with_kwargs=True)
    blocks[-1].register_forward_hook(gather_output, with_kwargs=True)
    for block in blocks:
        for name in plan.self_attention:
            attn = getattr(block, name)
            attn.set_processor(SequenceParallelAttnProcessor(mesh, state, attn.processor))
    return model
