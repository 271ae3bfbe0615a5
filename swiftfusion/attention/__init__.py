"""Attention math: local kernels with LSE, exact merging, distributed algorithms."""

from .configured import configured_attention
from .local import local_attention, merge_partials
from .sequence_parallel import (
    head_splits,
    ring_attention,
    ulysses_attention,
    usp_attention,
    usp_attention_v_first,
)
from .torus import torus_attention

__all__ = [
    "configured_attention",
    "head_splits",
    "local_attention",
    "merge_partials",
    "ring_attention",
    "torus_attention",
    "ulysses_attention",
    "usp_attention",
    "usp_attention_v_first",
]
