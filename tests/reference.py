"""Shared helpers for comparing with the single-process reference."""

import torch


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (elementwise ratios blow up near zero)."""
    scale = expected.abs().max().clamp_min(1e-12)
    return float((actual.float() - expected.float()).abs().max() / scale)


def sdpa_reference(q, k, v, key_mask=None):
    """Plain torch SDPA, independent of swiftfusion's kernels."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
