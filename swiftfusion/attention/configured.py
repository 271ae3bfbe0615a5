"""The sequence-parallel attention a mesh's config asks for, in one place: Torus, USP with
V-First, or plain USP (Ulysses and Ring as the groups' sizes make it)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import comm
from ..mesh import ParallelMesh
from .sequence_parallel import usp_attention, usp_attention_v_first, usp_attention_v_started
from .torus import torus_attention


def configured_attention(
    mesh: ParallelMesh,
    v: torch.Tensor,
    project_qk: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    scattered_v: comm.Pending | None = None,
) -> torch.Tensor:
    """``v`` and ``project_qk()`` (which makes Q and K) are ``[batch, heads, tokens, dim]`` for
    this rank's tokens; ``project_qk`` is called late when V-First can hide V's transfer behind it.
    ``scattered_v``: V's Ulysses scatter, already started by the caller (V-First)."""
    if mesh.config.sp_algorithm == "torus":
        return torus_attention(*project_qk(), v, mesh.ulysses, key_mask, scale)
    if scattered_v is not None:
        return usp_attention_v_started(scattered_v, v.shape[1], project_qk, mesh.ulysses, mesh.ring, key_mask, scale)
    if mesh.config.v_first:
        return usp_attention_v_first(v, project_qk, mesh.ulysses, mesh.ring, key_mask, scale)
    return usp_attention(*project_qk(), v, mesh.ulysses, mesh.ring, key_mask, scale)
