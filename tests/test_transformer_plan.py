"""A bare diffusers transformer, parallelized by its plan, against the same model on one process."""

import re

import pytest
import torch
from reference import max_rel_err

from swiftfusion import ParallelConfig, parallelize


def dit_case(folder, ulysses, ring):
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel.from_pretrained(folder, use_safetensors=True, low_cpu_mem_usage=False).eval()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 2, 10, 10, generator=g)
    t = torch.tensor([10.0, 700.0])
    y = torch.tensor([1, 4])
    with torch.no_grad():
        expected = model(x, t, y).sample
        parallelize(model, ParallelConfig(ulysses_degree=ulysses, ring_degree=ring, collective_timeout_s=30))
        actual = model(x, t, y).sample
        again = model(x, t, y).sample  # hooks must hold up across calls
    return max_rel_err(actual, expected), max_rel_err(again, expected)


@pytest.mark.parametrize("world,ulysses,ring", [(2, 2, 1), (2, 1, 2), (4, 4, 1), (4, 1, 4), (4, 2, 2)])
def test_bare_transformer_matches_single_process(worlds, tiny_dit_folder, world, ulysses, ring):
    for first, second in worlds.get(world).run(dit_case, tiny_dit_folder, ulysses, ring):
        assert first <= 1e-4 and second <= 1e-4


def test_unsupported_model_is_named():
    with pytest.raises(ValueError, match=re.escape("cannot parallelize Linear; supported: DigitsPipeline")):
        parallelize(torch.nn.Linear(2, 2), ParallelConfig())


def options_case(folder, options):
    from diffusers import DiTTransformer2DModel

    from swiftfusion import comm

    model = DiTTransformer2DModel.from_pretrained(folder, use_safetensors=True, low_cpu_mem_usage=False).eval()
    x = torch.randn(2, 2, 10, 10, generator=torch.Generator().manual_seed(6))
    t, y = torch.tensor([10.0, 700.0]), torch.tensor([1, 4])
    with torch.no_grad():
        expected = model(x, t, y).sample
        config = ParallelConfig(collective_timeout_s=30, **options)
        parallelize(model, config, ranks_per_node=2)
        with comm.events.capture() as log:
            actual = model(x, t, y).sample
    return max_rel_err(actual, expected), [name for name, _ in log if name.startswith("v_first")]


USP = dict(ulysses_degree=2, ring_degree=2)


@pytest.mark.parametrize(
    "options",
    [dict(**USP, v_first=True), dict(**USP, sp_layout="tas"), dict(ulysses_degree=4, sp_algorithm="torus"),
     # Ulysses over both nodes (2 ranks each), so TAPA's two phases really run:
     dict(ulysses_degree=4, all_to_all="tapa", v_first=True), dict(ulysses_degree=4, all_to_all="tapa")],
    ids=["v_first", "tas", "torus", "tapa-v_first", "tapa"],
)
def test_options_keep_the_model_exact(worlds, tiny_dit_folder, options):
    for error, v_first_events in worlds.get(4).run(options_case, tiny_dit_folder, options):
        assert error <= 1e-4
        # Two blocks: V posted before Q/K are projected, in each layer's attention.
        expected = ["v_first.v_posted", "v_first.qk_ready"] * 2 if options.get("v_first") else []
        assert v_first_events == expected
