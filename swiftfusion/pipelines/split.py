"""How one generation's batch and guidance are split across the mesh.

- Data parallel: the batch is cut into ``data_degree`` equal chunks (the last padded by repeating
  its final sample, so every rank runs the same shapes); ``gather_batch`` reassembles the original
  order on every rank.
- CFG parallel: with ``cfg_degree == 2`` the conditional branch runs on cfg index 0 and the
  unconditional one on index 1, and both predictions are exchanged before combining exactly as the
  single-process pipeline does; otherwise both branches run as one batch of twice the size.
  Pipelines that call the transformer once per branch get the two calls of a step paired across
  the CFG ranks instead: ``CfgPairing`` (its docstring says what state it keeps, and for how long).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable

import torch

from .. import comm
from ..mesh import Group, ParallelMesh

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GenerationSplit:
    def __init__(self, mesh: ParallelMesh | None = None) -> None:
        self.mesh = mesh

    @property
    def data_size(self) -> int:
        return self.mesh.data.size if self.mesh else 1

    @property
    def cfg_size(self) -> int:
        return self.mesh.cfg.size if self.mesh else 1

    def local_indices(self, n: int) -> torch.Tensor:
        """Indices (into a batch of ``n``) that this rank computes, padded to equal length."""
        per_rank = -(-n // self.data_size)
        start = (self.mesh.data.index if self.mesh else 0) * per_rank
        return torch.arange(start, start + per_rank).clamp(max=n - 1)

    def gather_batch(self, local: torch.Tensor, n: int) -> torch.Tensor:
        if self.data_size == 1:
            return local[:n]
        return comm.all_gather(local, self.mesh.data, dim=0)[:n]

    def guided(self, predict: Predict, x: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
               scale: float) -> torch.Tensor:
        """Classifier-free guidance: ``uncond + scale * (cond - uncond)``; just ``cond`` when
        ``scale <= 1`` (as diffusers pipelines do)."""
        if scale <= 1.0:
            return predict(x, cond)
        if self.cfg_size == 2:
            mine = predict(x, cond if self.mesh.cfg.index == 0 else uncond)
            both = comm.all_gather(mine[None], self.mesh.cfg, dim=0)
            cond_pred, uncond_pred = both[0], both[1]
        else:
            cond_pred, uncond_pred = predict(torch.cat([x, x]), torch.cat([cond, uncond])).chunk(2)
        return uncond_pred + scale * (cond_pred - uncond_pred)


def apply_batch_split(model: torch.nn.Module, group: Group, unbatched: tuple[str, ...] = ()) -> None:
    """Data and CFG parallel for a diffusers transformer: each member of ``group`` runs the call on
    its chunk of the batch (the last chunk padded by repeating the final sample) and every member
    gets the whole output, in order. A pipeline that stacks the unconditional and conditional
    inputs into one batch thus runs them on different ranks. ``unbatched``: arguments without a
    batch dimension, left whole."""
    if group.size == 1:
        return
    names = list(inspect.signature(model.forward).parameters)
    calls: list[int] = []  # the batch size of the call in progress

    def split_inputs(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        batch = hidden.shape[0]
        calls.append(batch)
        per_rank = -(-batch // group.size)
        index = torch.arange(group.index * per_rank, (group.index + 1) * per_rank).clamp(max=batch - 1)

        def take(name: str, value):
            if name in unbatched or not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] != batch:
                return value
            return value.index_select(0, index.to(value.device))

        args = tuple(take(names[i], value) for i, value in enumerate(args))
        return args, {name: take(name, value) for name, value in kwargs.items()}

    def gather_output(module, args, kwargs, output):
        batch = calls.pop()

        def whole(local: torch.Tensor) -> torch.Tensor:
            return comm.all_gather(local, group, dim=0)[:batch]

        if isinstance(output, tuple):
            return (whole(output[0]), *output[1:])
        output.sample = whole(output.sample)
        return output

    model.register_forward_pre_hook(split_inputs, with_kwargs=True)
    model.register_forward_hook(gather_output, with_kwargs=True)


class CfgPairing:
    """CFG parallel for pipelines that call the transformer once per guidance branch, labelled by
    diffusers' ``cache_context("cond")`` / ``cache_context("uncond")`` (Flux with true CFG, Wan,
    QwenImage, HunyuanVideo): the two calls of a step run on the two CFG ranks at once.

    The unconditional call's inputs are not known when the conditional call arrives, but they
    differ from it only in arguments that stay the same across steps (the negative prompt's
    embeddings). So a step without a prediction runs both calls on both ranks and learns the
    unconditional call's own arguments (those that differ from the conditional call's). At a later
    conditional call, CFG rank 0 computes it and rank 1 computes the unconditional call predicted
    from what was learnt (the conditional call's arguments with the learnt ones put in); the two
    results are exchanged, and the unconditional call, when it arrives with exactly the predicted
    arguments, returns the result at once (otherwise it is computed and learnt again, as without
    pairing). Exact either way.

    State, by lifetime. The transformer is not told where one pipeline call ends and the next
    begins (a call may also stop halfway), so no decision rests on knowing it:

    - one step: the conditional call's arguments and the prediction made at it are taken by the
      very next transformer call and kept by none after it. A prediction that the next call does
      not take (no unconditional call: guidance is off) is dropped, and what was learnt with it.
    - the pipeline: what was learnt (``_Learnt``), stored with the *layout* of the conditional call
      it came with: per argument, tensors by shape, dtype and device, other values by value. It
      is used only at a conditional call of that same layout, so a predicted call has exactly the
      shapes of an unconditional call that already ran, whatever earlier calls looked like. A
      pipeline call of other shapes (batch size, resolution, frames, text length) learns anew at
      its first step. One of the same shapes predicts its first step from the previous negative
      prompt: right when it is unchanged (the usual case, and every step is paired), and otherwise
      found wrong when the unconditional call arrives, at no cost over learning but one exchange
      (rank 1 computed it while rank 0 computed the conditional call, which both would compute
      without a guess).

    Every rank decides the same: each decision depends only on the transformer's arguments, equal
    on every rank since every rank makes the same pipeline call (``agreement``), never on a rank's
    own data. ``paired_steps`` counts unconditional calls answered by a prediction,
    ``missed_steps`` predictions computed but not used.
    """

    def __init__(self, model: torch.nn.Module, group: Group) -> None:
        self.model, self.group = model, group
        self.names = list(inspect.signature(model.forward).parameters)
        self.label: str | None = None
        self.cond: dict | None = None  # this step's conditional call, until the next call
        self.predicted: tuple[dict, object] | None = None  # its predicted unconditional call and output
        self.learnt: _Learnt | None = None
        self.paired_steps = 0
        self.missed_steps = 0
        open_context = model.cache_context

        @contextlib.contextmanager
        def labelled(name: str, **kwargs):
            self.label = name
            try:
                with open_context(name, **kwargs):
                    yield
            finally:
                self.label = None

        model.cache_context = labelled
        # Outermost, before the model's hooks (batch and sequence split), so that a predicted call
        # can be answered without running the model and its hooks.
        model._compiled_call_impl = self

    def _run(self, kwargs: dict):
        return type(self.model)._call_impl(self.model, **kwargs)

    def __call__(self, *args, **kwargs):
        kwargs = {**dict(zip(self.names[: len(args)], args, strict=True)), **kwargs}
        cond, self.cond = self.cond, None  # one step's state: this call takes it, no later one
        predicted, self.predicted = self.predicted, None
        if self.label == "uncond":
            if predicted is not None:
                if _same_arguments(kwargs, predicted[0]):
                    self.paired_steps += 1
                    return predicted[1]
                self.missed_steps += 1
            if cond is not None:
                self.learnt = _Learnt.of(cond, kwargs)
            return self._run(kwargs)
        if predicted is not None:  # no unconditional call came for it: this pipeline call is unguided
            self.missed_steps += 1
            self.learnt = None
        if self.label != "cond":
            return self._run(kwargs)
        self.cond = kwargs
        uncond = None if self.learnt is None else self.learnt.predict(kwargs)
        if uncond is None:
            return self._run(kwargs)
        mine = self._run(kwargs if self.group.index == 0 else uncond)
        sample = mine[0] if isinstance(mine, tuple) else mine.sample
        cond_sample, uncond_sample = comm.all_gather(sample[None], self.group, dim=0)
        self.predicted = (uncond, _with_sample(mine, uncond_sample))
        return _with_sample(mine, cond_sample)


@dataclasses.dataclass(frozen=True)
class _Learnt:
    """An unconditional call, as far as it can be predicted from its conditional call."""

    cond_layout: dict  # the conditional call it came with, by ``_layout``
    names: tuple[str, ...]  # its arguments' names, in order
    own: dict  # its arguments that the conditional call lacks or passes otherwise

    @classmethod
    def of(cls, cond: dict, uncond: dict) -> _Learnt:
        own = {k: v for k, v in uncond.items() if k not in cond or not _same_value(v, cond[k])}
        return cls(_layout(cond), tuple(uncond), own)

    def predict(self, cond: dict) -> dict | None:
        """The unconditional call that goes with ``cond``; None unless ``cond`` has the layout of
        the conditional call this was learnt with (then every argument has the shape it had)."""
        if not _same_value(_layout(cond), self.cond_layout):
            return None
        return {k: self.own[k] if k in self.own else cond[k] for k in self.names}


@dataclasses.dataclass(frozen=True)
class _TensorLayout:
    shape: torch.Size
    dtype: torch.dtype
    device: torch.device


def _layout(value):
    """``value`` as far as a call's shapes go: tensors by shape, dtype and device (their content
    left out), lists, tuples and dicts item by item, anything else as it is."""
    if isinstance(value, torch.Tensor):
        return _TensorLayout(value.shape, value.dtype, value.device)
    if isinstance(value, (tuple, list)):
        return [_layout(item) for item in value]
    if isinstance(value, dict):
        return {key: _layout(item) for key, item in value.items()}
    return value


def _with_sample(output, sample: torch.Tensor):
    if isinstance(output, tuple):
        return (sample, *output[1:])
    return type(output)(**{**output, "sample": sample})


def _same_value(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return _same_arguments(a, b)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    return bool(a == b)


def _same_arguments(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
