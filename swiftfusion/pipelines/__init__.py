"""``parallelize``: the one entry point that makes a pipeline or a bare model run in parallel."""

from __future__ import annotations

import torch

from .. import comm
from ..config import ParallelConfig
from ..mesh import build_mesh
from ..models import BUILTIN_MODELS
from ..models.plan import PLANS, apply_sequence_parallel, attention_shape
from ..planner import choose_layout
from ..runtime import init_distributed, world_size
from ..topology import Topology
from .agreement import check_calls, uncheck_calls
from .digits import DigitsOutput, DigitsPipeline
from .split import CfgPairing, GenerationSplit, apply_batch_split

# Pipelines that call the transformer once per guidance branch (labelled "cond" / "uncond"):
# CFG parallel pairs the calls across the CFG ranks instead of splitting one call's batch.
CFG_BY_CALLS = ("FluxPipeline", "WanPipeline", "QwenImagePipeline", "HunyuanVideoPipeline")


def parallelize(target, config: ParallelConfig, ranks_per_node: int | None = None):
    """Returns ``target`` ready to run on this process's share of the mesh.

    - a ``DigitsPipeline``: sequence parallel inside the transformer, CFG and data parallel
      around it; every rank returns the full, ordered batch of images.
    - a diffusers pipeline whose ``transformer`` has a plan (``models.plan.PLANS``), or such a bare
      transformer: sequence parallel inside the transformer; data and CFG parallel split each
      transformer call's batch (a CFG pipeline stacks its two branches into one batch, so they run
      on different ranks; pipelines that call the transformer once per branch, ``CFG_BY_CALLS``,
      get the two calls of a step paired across the CFG ranks: ``CfgPairing``). Every rank passes
      the full inputs and gets the full outputs; text encoders and the VAE run whole on every rank.

    Every rank calls the pipeline itself, and all must make the same call: in a world of more than
    one rank, each call of a parallelized pipeline first checks (one small gather, before any other
    collective; ``agreement``) that every rank passed equal arguments: every argument of the call,
    bound to ``__call__``'s signature with defaults applied (prompts, sizes, batch sizes, steps and
    the like by value, generators by their state, tensors, arrays and images by shape, dtype and
    content, callables by qualified name, other objects by type); ``show_progress`` may differ. If
    any differs, every rank raises the same ``ValueError`` naming the arguments and the ranks'
    values. A diffusers pipeline gets the check by a change of its instance's class to a subclass
    of the same name (``agreement.check_calls``; ``agreement.uncheck_calls`` undoes it); a bare
    transformer, called once per step, is not checked.

    Joins torch.distributed from the launcher's environment (torchrun variables) if needed.
    """
    init_distributed(config.collective_timeout_s)
    comm.set_timeout(config.collective_timeout_s)
    if isinstance(target, DigitsPipeline):
        mesh = _mesh_for(target.transformer, config, ranks_per_node)
        apply_sequence_parallel(target.transformer, mesh)
        target.split = GenerationSplit(mesh)
        return target
    transformer = target if isinstance(target, torch.nn.Module) else getattr(target, "transformer", None)
    if transformer is not None and type(transformer).__name__ in PLANS:
        mesh = _mesh_for(transformer, config, ranks_per_node)
        # Wan 2.2 has a second transformer (the low-noise expert) of the same class.
        for model in (transformer, getattr(target, "transformer_2", None)):
            if model is not None:
                _parallelize_transformer(model, mesh, pair_cfg_calls=type(target).__name__ in CFG_BY_CALLS)
        if target is not transformer and world_size() > 1:  # a bare transformer runs per step: not checked
            check_calls(target)
        return target
    raise ValueError(
        f"cannot parallelize {type(target).__name__}; supported: DigitsPipeline "
        f"({', '.join(BUILTIN_MODELS)}), and diffusers pipelines or bare transformers of the classes "
        f"{', '.join(sorted(PLANS))}"
    )


def _parallelize_transformer(model: torch.nn.Module, mesh, pair_cfg_calls: bool) -> None:
    apply_sequence_parallel(model, mesh)
    unbatched = PLANS[type(model).__name__].unbatched
    if mesh.cfg.size > 1 and pair_cfg_calls:
        apply_batch_split(model, mesh.data, unbatched)
        model._swiftfusion_cfg_pairing = CfgPairing(model, mesh.cfg)
    else:
        apply_batch_split(model, mesh.batch, unbatched)


def _mesh_for(model: torch.nn.Module, config: ParallelConfig, ranks_per_node: int | None):
    """The mesh, with ``sp_layout="auto"`` resolved by the planner for this model's attention."""
    layout = None
    if config.sp_layout == "auto":
        config.check_world_size(world_size())
        topology = Topology.detect(world_size(), ranks_per_node, config.intra_node_link, config.inter_node_link)
        layout = choose_layout(config, topology, *attention_shape(model))
    return build_mesh(config, ranks_per_node, layout)


def load_pipeline(model: str) -> DigitsPipeline:
    """Loads a pipeline by model name; raises naming the known models for an unknown one."""
    check_model_name(model)
    return DigitsPipeline.from_pretrained()


def check_model_name(model: str) -> None:
    if model not in BUILTIN_MODELS:
        raise ValueError(f"unknown model {model!r}; available: {', '.join(BUILTIN_MODELS)}")


__all__ = [
    "DigitsOutput", "DigitsPipeline", "GenerationSplit", "check_calls", "load_pipeline", "parallelize", "uncheck_calls",
]
