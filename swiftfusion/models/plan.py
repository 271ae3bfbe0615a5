"""Declarative sequence-parallel plans for diffusers transformers, and the hooks that apply them.

A plan names, for one transformer class, which tensors are split along their token dimension and
where (a module's inputs or outputs), where they are gathered again, and which attention modules
see split tokens. Tensors that belong to the same token sequence (a *stream*: the image or video
tokens, the text tokens) are split the same way: padded to a multiple of the group size, one
contiguous chunk per rank. The model's own forward runs unchanged: forward hooks split and gather,
and inside each planned attention module the call to ``scaled_dot_product_attention`` becomes
sequence-parallel attention over every rank's tokens (``configured_attention``), with the padding
keys masked. Joint attention (text and image tokens concatenated, MMDiT) works the same way: each
rank's keys are its chunk of every stream; attention does not care about key order, and rotary
embeddings are split with the tokens they belong to.

Cross-attention (queries from split tokens, keys from the replicated text) needs nothing: it is
exact on a chunk of queries, so it is left alone.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .. import comm
from ..attention import configured_attention
from ..attention.sequence_parallel import start_scatter_heads
from ..mesh import ParallelMesh
from ..sequence import SequenceShard


@dataclass(frozen=True)
class Split:
    """A tensor (or each tensor of a tuple) that is a view of ``stream`` along ``dim``; with
    ``ndim`` set, only tensors with that many dimensions are split (others are per-sample). With
    ``tokens_inner``, ``dim`` holds (something × the stream's tokens) flattened, tokens inner, as
    in a batch of per-token sequences (Latte's temporal blocks). A tuple of streams: ``dim`` is
    their concatenation, in that order (a joint attention mask), each part split with its stream."""

    stream: str | tuple[str, ...]
    dim: int
    ndim: int | None = None
    tokens_inner: bool = False


Where = dict[str | int, Split]  # argument name or position (inputs), output index (outputs; -1: whole)


@dataclass(frozen=True)
class SequenceParallelPlan:
    """Module paths are relative to the transformer ("" is the transformer itself); ``*`` matches
    one path element (every block), and a last element ``-1`` is the last block of a list."""

    split_inputs: dict[str, Where]
    gather_outputs: dict[str, Where]
    attention: dict[str, tuple[str, ...]]  # module pattern -> streams in its keys, in order
    split_outputs: dict[str, Where] = field(default_factory=dict)  # modules making per-token tensors
    # Arguments of the transformer without a batch dimension (data/CFG parallel leaves them whole).
    unbatched: tuple[str, ...] = ()
    # Our own processor (diffusers' AttnProcessor2_0 semantics) instead of the diffusers one, so
    # that V-First can start V's transfer before Q/K are projected. Only for ``Attention`` modules.
    v_first_processor: bool = False


WHOLE = -1
_IMAGE = "image"
_TEXT = "text"

PLANS: dict[str, SequenceParallelPlan] = {
    "DiTTransformer2DModel": SequenceParallelPlan(
        split_inputs={"transformer_blocks.0": {"hidden_states": Split(_IMAGE, 1)}},
        gather_outputs={"transformer_blocks.-1": {WHOLE: Split(_IMAGE, 1)}},
        attention={"transformer_blocks.*.attn1": (_IMAGE,)},
        v_first_processor=True,
    ),
    "PixArtTransformer2DModel": SequenceParallelPlan(
        split_inputs={"transformer_blocks.0": {"hidden_states": Split(_IMAGE, 1)}},
        gather_outputs={"transformer_blocks.-1": {WHOLE: Split(_IMAGE, 1)}},
        attention={"transformer_blocks.*.attn1": (_IMAGE,)},
        v_first_processor=True,
    ),
    "SD3Transformer2DModel": SequenceParallelPlan(
        split_inputs={},
        split_outputs={"pos_embed": {WHOLE: Split(_IMAGE, 1)}, "context_embedder": {WHOLE: Split(_TEXT, 1)}},
        gather_outputs={"proj_out": {WHOLE: Split(_IMAGE, 1)}},
        # JointAttnProcessor2_0 puts the image tokens first; SD3.5's extra attention sees only them.
        attention={"transformer_blocks.*.attn": (_IMAGE, _TEXT), "transformer_blocks.*.attn2": (_IMAGE,)},
    ),
    "FluxTransformer2DModel": SequenceParallelPlan(
        split_inputs={"": {"hidden_states": Split(_IMAGE, 1), "encoder_hidden_states": Split(_TEXT, 1),
                           "img_ids": Split(_IMAGE, 0, ndim=2), "txt_ids": Split(_TEXT, 0, ndim=2)}},
        gather_outputs={"proj_out": {WHOLE: Split(_IMAGE, 1)}},
        attention={"transformer_blocks.*.attn": (_TEXT, _IMAGE), "single_transformer_blocks.*.attn": (_TEXT, _IMAGE)},
        unbatched=("img_ids", "txt_ids"),
    ),
    "WanTransformer3DModel": SequenceParallelPlan(
        split_inputs={"blocks.0": {"hidden_states": Split(_IMAGE, 1)},
                      "": {"timestep": Split(_IMAGE, 1, ndim=2)}},  # Wan 2.2 TI2V: a timestep per token
        split_outputs={"rope": {0: Split(_IMAGE, 1), 1: Split(_IMAGE, 1)}},
        gather_outputs={"proj_out": {WHOLE: Split(_IMAGE, 1)}},
        attention={"blocks.*.attn1": (_IMAGE,)},
    ),
    "CogVideoXTransformer3DModel": SequenceParallelPlan(
        split_inputs={"transformer_blocks.0": {"hidden_states": Split(_IMAGE, 1),
                                               "encoder_hidden_states": Split(_TEXT, 1)},
                      "": {"image_rotary_emb": Split(_IMAGE, 0)}},
        gather_outputs={"transformer_blocks.-1": {0: Split(_IMAGE, 1), 1: Split(_TEXT, 1)}},
        attention={"transformer_blocks.*.attn1": (_TEXT, _IMAGE)},
        unbatched=("image_rotary_emb",),
    ),
    "LatteTransformer3DModel": SequenceParallelPlan(
        # Spatial blocks attend within a frame (split tokens: sequence parallel); temporal blocks
        # attend over frames at one token, a batch of per-token sequences: split with the tokens.
        split_inputs={"temporal_transformer_blocks.*": {"timestep": Split(_IMAGE, 0, tokens_inner=True)}},
        split_outputs={"pos_embed": {WHOLE: Split(_IMAGE, 1)}},
        gather_outputs={"proj_out": {WHOLE: Split(_IMAGE, 1)}},
        attention={"transformer_blocks.*.attn1": (_IMAGE,)},
        v_first_processor=True,
    ),
    "QwenImageTransformer2DModel": SequenceParallelPlan(
        split_inputs={"transformer_blocks.0": {"hidden_states": Split(_IMAGE, 1),
                                               "encoder_hidden_states": Split(_TEXT, 1)},
                      "transformer_blocks.*": {"encoder_hidden_states_mask": Split(_TEXT, 1, ndim=2)}},
        split_outputs={"pos_embed": {0: Split(_IMAGE, 0), 1: Split(_TEXT, 0)}},  # rotary factors per token
        gather_outputs={"proj_out": {WHOLE: Split(_IMAGE, 1)}},
        attention={"transformer_blocks.*.attn": (_TEXT, _IMAGE)},
    ),
    "HunyuanVideoTransformer3DModel": SequenceParallelPlan(
        split_inputs={"transformer_blocks.0": {"hidden_states": Split(_IMAGE, 1),
                                               "encoder_hidden_states": Split(_TEXT, 1)},
                      # The joint key mask (video tokens, then text tokens), built for the whole sequence.
                      "transformer_blocks.*": {"attention_mask": Split((_IMAGE, _TEXT), 3)},
                      "single_transformer_blocks.*": {"attention_mask": Split((_IMAGE, _TEXT), 3)}},
        split_outputs={"rope": {0: Split(_IMAGE, 0), 1: Split(_IMAGE, 0)}},
        gather_outputs={"proj_out": {WHOLE: Split(_IMAGE, 1)}},
        attention={"transformer_blocks.*.attn": (_IMAGE, _TEXT), "single_transformer_blocks.*.attn": (_IMAGE, _TEXT)},
    ),
    "HunyuanDiT2DModel": SequenceParallelPlan(
        split_inputs={"blocks.0": {"hidden_states": Split(_IMAGE, 1)}, "": {"image_rotary_emb": Split(_IMAGE, 0)}},
        gather_outputs={"blocks.-1": {WHOLE: Split(_IMAGE, 1)}},
        attention={"blocks.*.attn1": (_IMAGE,)},
        unbatched=("image_rotary_emb",),
    ),
}


class _ForwardState:
    """The split of each stream in the current forward (set by the hooks, read by attention)."""

    def __init__(self, mesh: ParallelMesh) -> None:
        self.mesh = mesh
        self.shards: dict[str, SequenceShard] = {}
        self.masks: dict[tuple, torch.Tensor | None] = {}

    def reset(self) -> None:
        self.shards, self.masks = {}, {}

    def shard_of(self, stream: str, total: int) -> SequenceShard:
        shard = self.shards.setdefault(stream, SequenceShard.for_length(total, self.mesh.sp))
        if shard.total != total:
            raise ValueError(f"the {stream} tokens were split as {shard.total} long, now {total}")
        return shard

    def key_mask(self, streams: tuple[str, ...], batch: int, device: torch.device) -> torch.Tensor | None:
        """The global key mask of attention whose local keys are each stream's chunk, in order."""
        key = (streams, batch, device)
        if key not in self.masks:
            shards = [self.shards[s] for s in streams]
            if not any(s.has_padding for s in shards):
                self.masks[key] = None
            else:
                per_rank = [torch.arange(s.local) + r * s.local < s.total
                            for r in range(self.mesh.sp.size) for s in shards]
                self.masks[key] = torch.cat(per_rank).to(device).expand(batch, -1)
        return self.masks[key]


def _split(value, split: Split, state: _ForwardState, gather: bool = False):
    if isinstance(value, (tuple, list)):
        return type(value)(_split(v, split, state, gather) for v in value)
    if not isinstance(value, torch.Tensor) or (split.ndim is not None and value.ndim != split.ndim):
        return value
    if isinstance(split.stream, tuple):
        parts = value.split([state.shards[stream].total for stream in split.stream], split.dim)
        return torch.cat([_split(part, Split(stream, split.dim), state, gather)
                          for part, stream in zip(parts, split.stream, strict=True)], split.dim)
    if split.tokens_inner:
        shard = state.shards[split.stream]
        grouped = value.unflatten(split.dim, (-1, shard.total if not gather else shard.local))
        inner = Split(split.stream, split.dim + 1)
        return _split(grouped, inner, state, gather).flatten(split.dim, split.dim + 1)
    if gather:
        return state.shards[split.stream].gather(value, split.dim)
    return state.shard_of(split.stream, value.shape[split.dim]).shard(value, split.dim)


def _apply_to_output(output, where: Where, state: _ForwardState, gather: bool):
    if WHOLE in where:
        return _split(output, where[WHOLE], state, gather)
    items = list(output)
    for index, split in where.items():
        items[index] = _split(items[index], split, state, gather)
    return type(output)(items)


def _input_hook(where: Where, state: _ForwardState, signature_of: torch.nn.Module):
    names = list(inspect.signature(signature_of.forward).parameters)

    def hook(module, args, kwargs):
        args = list(args)
        for key, split in where.items():
            if key in kwargs:
                kwargs[key] = _split(kwargs[key], split, state)
                continue
            position = key if isinstance(key, int) else names.index(key) if key in names else None
            if position is not None and position < len(args):
                args[position] = _split(args[position], split, state)
        return tuple(args), kwargs

    return hook


class _SequenceParallelSDPA(TorchFunctionMode):
    """Inside one attention module: ``scaled_dot_product_attention`` on this rank's tokens becomes
    attention over every rank's tokens. Other torch calls pass through, except with V-First (see
    ``_VFirst``)."""

    def __init__(self, state: _ForwardState, streams: tuple[str, ...], attn: torch.nn.Module) -> None:
        super().__init__()
        self.state, self.streams = state, streams
        config, mesh = state.mesh.config, state.mesh
        use_v_first = config.v_first and config.sp_algorithm == "usp" and mesh.ulysses.size > 1
        self.v_first = _VFirst(attn, mesh) if use_v_first else None
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and self.v_first is not None:
            return self.v_first.linear(func, args, kwargs)
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        bound = _SDPA_SIGNATURE.bind(*args, **kwargs).arguments
        q, k, v = bound["query"], bound["key"], bound["value"]
        if bound.get("is_causal") or bound.get("dropout_p"):
            raise NotImplementedError("sequence-parallel attention supports neither is_causal nor dropout")
        if k.shape[-3] != q.shape[-3]:
            raise NotImplementedError("sequence-parallel attention needs as many K/V heads as query heads")
        if k.shape[-2] != q.shape[-2]:  # e.g. an IP-adapter's image keys inside a planned module
            raise NotImplementedError("sequence-parallel attention inside this module got keys that are not its "
                                      f"tokens ({k.shape[-2]} keys for {q.shape[-2]} queries)")
        self.calls += 1
        mask = self.state.key_mask(self.streams, q.shape[0], q.device)
        if bound.get("attn_mask") is not None:  # e.g. padded prompts: which of this rank's keys count
            keys = comm.all_gather(_local_key_mask(bound["attn_mask"], q.shape[0], k.shape[-2]), self.state.mesh.sp, 1)
            mask = keys if mask is None else mask & keys
        scattered_v = self.v_first.scattered(v) if self.v_first is not None else None
        return configured_attention(self.state.mesh, v, lambda: (q, k), mask, bound.get("scale"),
                                    scattered_v).to(q.dtype)


class _VFirst:
    """CoCoDiff's V-First inside diffusers' own attention processors, without copying them: when
    the processor projects Q or K from an input (``to_q``/``to_k``, or the text stream's
    ``add_q_proj``/``add_k_proj``), V's projection of the same input is computed at once and its
    Ulysses all-to-all started, so Q/K projection, norm and rotary hide V's transfer; the
    processor's own V projection then returns that result. At attention, the V the processor
    passes must equal the V pieces started (concatenated in either order, e.g. text then image);
    otherwise (a LoRA on V, a fused projection) the transfers are drained and V goes the usual
    way. Either way the result is exact, and every rank takes the same path (same model, same code)."""

    def __init__(self, attn: torch.nn.Module, mesh: ParallelMesh) -> None:
        self.mesh, self.heads = mesh, attn.heads
        self.v_for: dict[int, torch.nn.Linear] = {}  # weight id of a Q/K/V projection -> its V projection
        for q, k, v in (("to_q", "to_k", "to_v"), ("add_q_proj", "add_k_proj", "add_v_proj")):
            v_proj = getattr(attn, v, None)
            if isinstance(v_proj, torch.nn.Linear):
                for name in (q, k, v):
                    if isinstance(getattr(attn, name, None), torch.nn.Linear):
                        self.v_for[id(getattr(attn, name).weight)] = v_proj
        self.started: dict[tuple[int, int], tuple] = {}  # (V projection, input) -> (V, heads-first V, scatter, input)

    def linear(self, func, args, kwargs):
        x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        v_proj = self.v_for.get(id(weight))
        if v_proj is None or x.dim() != 3:
            return func(*args, **kwargs)
        key = (id(v_proj), id(x))
        if key not in self.started:
            value = func(x, v_proj.weight, v_proj.bias)
            heads_first = value.view(*value.shape[:2], self.heads, -1).transpose(1, 2)
            self.started[key] = (value, heads_first, start_scatter_heads(heads_first, self.mesh.ulysses), x)
            comm.events.record("v_first.v_started_at_projection", 0)
        if weight is v_proj.weight:
            return self.started[key][0]
        return func(*args, **kwargs)

    def scattered(self, v: torch.Tensor) -> comm.Pending | None:
        started, self.started = list(self.started.values()), {}
        if not started:
            return None
        for order in (started, started[::-1]):
            local = torch.cat([heads_first for _, heads_first, _, _ in order], dim=2)
            if local.shape == v.shape and torch.equal(local, v):
                return _joined_scatter([scatter for _, _, scatter, _ in order], self.mesh.ulysses.size)
        for _, _, scatter, _ in started:
            scatter.wait()
        return None


def _joined_scatter(pieces: list[comm.Pending], sources: int) -> comm.Pending:
    """Scattered V pieces ``[B, H, sources * L_j, D]`` (source-major) joined as if scattered
    together: each source's tokens are its pieces in order."""
    def join(_: object) -> torch.Tensor:
        parts = [p.wait() for p in pieces]
        parts = [p.unflatten(2, (sources, -1)) for p in parts]
        return torch.cat(parts, dim=3).flatten(2, 3)

    return comm.Pending([], None).then(join)


def _local_key_mask(attn_mask: torch.Tensor, batch: int, keys: int) -> torch.Tensor:
    """``[batch, keys]`` booleans (True = attend) from an SDPA mask that only depends on the key:
    boolean, or additive with 0 (attend) and very negative values (do not)."""
    if attn_mask.dim() == 4 and attn_mask.shape[1] == attn_mask.shape[2] == 1:
        attn_mask = attn_mask[:, 0, 0]
    if attn_mask.dim() != 2 or attn_mask.shape[-1] != keys:
        raise NotImplementedError(f"sequence-parallel attention takes key masks ([batch, 1, 1, keys]), got an "
                                  f"attention mask of shape {tuple(attn_mask.shape)}")
    if attn_mask.dtype != torch.bool:
        drop = attn_mask <= torch.finfo(attn_mask.dtype).min / 2
        if not torch.all(drop | (attn_mask == 0)):
            raise NotImplementedError("sequence-parallel attention takes additive masks of 0 and -inf only")
        attn_mask = ~drop
    return attn_mask.expand(batch, keys).contiguous()


def _sdpa_reference(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False):
    """Only its signature is used: how ``scaled_dot_product_attention`` binds its arguments."""


_SDPA_SIGNATURE = inspect.signature(_sdpa_reference)


def _attention_in_mode(module: torch.nn.Module, state: _ForwardState, streams: tuple[str, ...], path: str) -> None:
    forward = module.forward

    def sequence_parallel_forward(*args, **kwargs):
        with _SequenceParallelSDPA(state, streams, module) as mode:
            out = forward(*args, **kwargs)
        if mode.calls == 0:
            raise RuntimeError(
                f"{path}: attention ran without torch's scaled_dot_product_attention (another attention "
                "backend?); sequence parallelism needs diffusers' native backend"
            )
        return out

    module.forward = sequence_parallel_forward


class SequenceParallelAttnProcessor:
    """Self-attention over the full sequence from token shards (diffusers' AttnProcessor2_0
    semantics, with the attention itself done by ``configured_attention``), so that V-First can
    start V's transfer before Q and K are projected and normalised."""

    def __init__(self, state: _ForwardState, streams: tuple[str, ...]) -> None:
        self.state, self.streams = state, streams

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if (encoder_hidden_states is not None or attention_mask is not None or attn.spatial_norm is not None
                or attn.group_norm is not None or hidden_states.ndim != 3):
            raise NotImplementedError(
                "sequence-parallel self-attention takes [batch, tokens, dim] hidden states and no "
                "encoder_hidden_states, attention_mask, spatial_norm or group_norm"
            )
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
        mask = self.state.key_mask(self.streams, batch, hidden_states.device)
        out = configured_attention(self.state.mesh, v, project_qk, mask, attn.scale)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(hidden_states.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def plan_for(model: torch.nn.Module) -> SequenceParallelPlan:
    name = type(model).__name__
    if name not in PLANS:
        raise ValueError(f"no sequence-parallel plan for {name}; supported: {', '.join(sorted(PLANS))}")
    return PLANS[name]


def modules_at(model: torch.nn.Module, pattern: str, required: bool = True) -> list[tuple[str, torch.nn.Module]]:
    """The submodules a plan path names: ``*`` is any one element, a final ``-1`` the last of a list."""
    if pattern == "":
        return [("", model)]
    if pattern.endswith(".-1"):
        parent = model.get_submodule(pattern[:-3])
        return [(f"{pattern[:-3]}.{len(parent) - 1}", parent[len(parent) - 1])]
    regex = re.compile("^" + re.escape(pattern).replace(r"\*", r"[^.]+") + "$")
    found = [(name, module) for name, module in model.named_modules() if regex.match(name)]
    if not found and required:
        raise ValueError(f"{type(model).__name__} has no module matching the plan's {pattern!r}")
    return found


def attention_shape(model: torch.nn.Module) -> tuple[int, int]:
    """(heads, head_dim) of the model's sequence-parallel attention, read from its first module."""
    _, attn = modules_at(model, next(iter(plan_for(model).attention)))[0]  # the first pattern is the main one
    return attn.heads, attn.to_q.out_features // attn.heads


def apply_sequence_parallel(model: torch.nn.Module, mesh: ParallelMesh) -> torch.nn.Module:
    """Makes ``model`` compute its forward with its tokens split over ``mesh.sp``. Every rank of
    the sequence-parallel group passes the same full inputs and gets the same full output."""
    plan = plan_for(model)
    if getattr(model, "_swiftfusion_mesh", None) is not None:
        raise ValueError(f"{type(model).__name__} is already parallelized")
    model._swiftfusion_mesh = mesh
    if mesh.sp.size == 1:
        return model
    state = _ForwardState(mesh)
    model.register_forward_pre_hook(lambda module, args: state.reset())
    for pattern, where in plan.split_inputs.items():
        for _, module in modules_at(model, pattern):
            module.register_forward_pre_hook(_input_hook(where, state, module), with_kwargs=True)
    for table, gather in ((plan.split_outputs, False), (plan.gather_outputs, True)):
        for pattern, where in table.items():
            for _, module in modules_at(model, pattern):
                module.register_forward_hook(
                    lambda module, args, output, where=where, gather=gather: _apply_to_output(output, where, state,
                                                                                               gather))
    attention = [(path, attn, streams) for pattern, streams in plan.attention.items()
                 for path, attn in modules_at(model, pattern, required=False)]  # e.g. SD3.5's attn2: some blocks
    if not attention:
        raise ValueError(f"{type(model).__name__} has no module matching the plan's {', '.join(plan.attention)}")
    for path, attn, streams in attention:
            if plan.v_first_processor:
                attn.set_processor(SequenceParallelAttnProcessor(state, streams))
            else:
                _attention_in_mode(attn, state, streams, path)
    return model
