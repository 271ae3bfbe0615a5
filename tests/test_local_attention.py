import pytest
import torch
from reference import max_rel_err, sdpa_reference

from swiftfusion.attention import local_attention, merge_partials


def _inputs(seed=0, b=2, h=3, sq=7, sk=11, d=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, sq, d, generator=g), torch.randn(b, h, sk, d, generator=g),
            torch.randn(b, h, sk, d, generator=g))


@pytest.mark.parametrize("backend", ["math", "cpu_flash"])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_sdpa_and_lse(backend, masked):
    q, k, v = _inputs()
    mask = None
    if masked:
        mask = torch.ones(2, 11, dtype=torch.bool)
        mask[0, 3:] = False
        mask[1, :5] = False
    out, lse = local_attention(q, k, v, mask, backend=backend)
    assert max_rel_err(out, sdpa_reference(q, k, v, mask)) < 1e-5
    scores = (q @ k.transpose(-1, -2)) / 8**0.5
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    assert torch.allclose(lse, torch.logsumexp(scores, -1), atol=1e-5)


@pytest.mark.parametrize("backend", ["math", "cpu_flash"])
def test_fully_masked_block_contributes_nothing(backend):
    q, k, v = _inputs()
    mask = torch.zeros(2, 11, dtype=torch.bool)
    out, lse = local_attention(q, k, v, mask, backend=backend)
    assert torch.all(out == 0) and torch.all(lse == float("-inf"))


def test_merging_blocks_is_exact():
    q, k, v = _inputs(sk=13)
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[1, 4:9] = False  # one block of batch 1 is fully masked
    out = torch.zeros(2, 3, 7, 8)
    lse = torch.full((2, 3, 7), float("-inf"))
    for lo, hi in [(0, 4), (4, 9), (9, 13)]:
        block_out, block_lse = local_attention(q, k[:, :, lo:hi], v[:, :, lo:hi], mask[:, lo:hi])
        out, lse = merge_partials(out, lse, block_out, block_lse)
    assert max_rel_err(out, sdpa_reference(q, k, v, mask)) < 1e-5


def test_unknown_backend_is_named():
    q, k, v = _inputs()
    message = "unknown attention backend 'fast'; allowed: auto, math, cpu_flash, cuda_efficient"
    with pytest.raises(ValueError, match=message):
        local_attention(q, k, v, backend="fast")
