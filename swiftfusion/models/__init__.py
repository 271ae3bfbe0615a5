"""Models: the built-in model, and one declarative sequence-parallel plan per diffusers family."""

from .plan import PLANS, SequenceParallelPlan, apply_sequence_parallel

BUILTIN_MODELS = ("builtin:digits",)

__all__ = ["BUILTIN_MODELS", "PLANS", "SequenceParallelPlan", "apply_sequence_parallel"]
