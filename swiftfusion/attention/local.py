"""Local attention that also returns the log-sum-exp (LSE) of each query's scores, and the exact
merge of partial results computed over disjoint key blocks.

Layout everywhere: ``q, k, v`` are ``[batch, heads, seq, head_dim]``; ``key_mask`` is
``[batch, keys]`` bool, True where a key may be attended to. LSE is float32 ``[batch, heads, seq]``
and is ``-inf`` for a query that sees no valid key in the block (its output is then 0), so merging
such a block changes nothing.
"""

from __future__ import annotations

import math

import torch

BACKENDS = ("auto", "math", "cpu_flash", "cuda_efficient")


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of ``q`` over ``k``/``v``; returns ``(out, lse)``."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if backend == "auto":
        backend = {"cpu": "cpu_flash", "cuda": "cuda_efficient"}.get(q.device.type, "math")
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if k.shape[-2] == 0 or q.shape[1] == 0:
        return _empty_result(q, v)
    bias = None
    if key_mask is not None:
        bias = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device)
        bias = bias.masked_fill(~key_mask, float("-inf"))[:, None, None, :]
    if backend == "math":
        out, lse = _math_attention(q, k, v, bias, scale)
    elif backend == "cpu_flash":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, attn_mask=bias, scale=scale
        )
    else:  # cuda_efficient: untested here (no GPU in CI); see docs/attention.md
        if bias is not None:
            bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, bias, True, scale=scale
        )
        lse = lse[..., : q.shape[2]]
    lse = lse.float()
    if key_mask is not None:
        # Kernels disagree on fully masked rows (some report lse 0); make them contribute nothing.
        has_key = key_mask.any(dim=-1)[:, None, None]
        lse = torch.where(has_key, lse, float("-inf"))
        out = torch.where(has_key[..., None], out, 0)
    return out, lse


def _math_attention(q, k, v, bias, scale):
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias.float()
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - torch.where(torch.isfinite(lse), lse, 0)[..., None])
    return torch.matmul(probs, v.float()).to(q.dtype), lse


def _empty_result(q, v):
    out = q.new_zeros((*q.shape[:-1], v.shape[-1]))
    lse = torch.full(q.shape[:-1], float("-inf"), device=q.device)
    return out, lse


def merge_partials(
    out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combines attention over two disjoint key sets into attention over their union (exact).
    ``out`` is the float32 running result, ``lse`` its running LSE."""
    merged = torch.logaddexp(lse, block_lse)
    finite = torch.where(torch.isfinite(merged), merged, 0)  # both blocks empty: weights 0
    weight_old = torch.exp(lse - finite)[..., None]
    weight_new = torch.exp(block_lse - finite)[..., None]
    return out * weight_old + block_out.float() * weight_new, merged
