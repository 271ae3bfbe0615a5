"""The built-in pipeline in every parallel layout against the same pipeline on one process."""

import re

import pytest
import torch

from swiftfusion import DigitsPipeline, ParallelConfig, parallelize

DIGITS = [3, 8]
IMAGES_PER_PROMPT = 3  # 6 images: uneven over 4 data ranks
STEPS = 4


@pytest.fixture(scope="module")
def reference_images():
    torch.set_num_threads(1)
    pipe = DigitsPipeline.from_pretrained()
    return pipe(DIGITS, num_images_per_prompt=IMAGES_PER_PROMPT, num_inference_steps=STEPS, seed=11,
                show_progress=False).images


def pipeline_case(degrees, expected):
    degrees = dict(degrees)
    ranks_per_node = degrees.pop("ranks_per_node", None)
    pipe = parallelize(DigitsPipeline.from_pretrained(), ParallelConfig(**degrees, collective_timeout_s=30),
                       ranks_per_node=ranks_per_node)
    images = pipe(DIGITS, num_images_per_prompt=IMAGES_PER_PROMPT, num_inference_steps=STEPS, seed=11,
                  show_progress=False).images
    return images.shape == expected.shape, float((images - expected).abs().max())


LAYOUTS = {
    2: [dict(ulysses_degree=2), dict(ring_degree=2), dict(cfg_degree=2), dict(data_degree=2)],
    4: [dict(ulysses_degree=2, ring_degree=2), dict(cfg_degree=2, ulysses_degree=2), dict(data_degree=2, ring_degree=2),
        dict(data_degree=4), dict(cfg_degree=2, data_degree=2), dict(ulysses_degree=4), dict(ring_degree=4),
        # Topology-aware options on 2 nodes × 2 ranks:
        dict(ulysses_degree=2, ring_degree=2, sp_layout="tas", ranks_per_node=2),
        dict(ulysses_degree=2, ring_degree=2, sp_layout="auto", ranks_per_node=2),
        dict(ulysses_degree=4, all_to_all="tapa", v_first=True, ranks_per_node=2),
        dict(ulysses_degree=4, all_to_all="tapa", transport="one_sided", ranks_per_node=2),
        dict(ulysses_degree=2, ring_degree=2, transport="one_sided", v_first=True, ranks_per_node=2),
        dict(ulysses_degree=4, sp_algorithm="torus", ranks_per_node=2)],
}


@pytest.mark.parametrize("world,degrees", [(w, d) for w, layouts in LAYOUTS.items() for d in layouts],
                         ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else str(v))
def test_parallel_pipeline_matches_single_process(worlds, reference_images, world, degrees):
    for same_shape, max_abs in worlds.get(world).run(pipeline_case, degrees, reference_images):
        assert same_shape
        assert max_abs <= 1e-4  # images in [0, 1]; 1/255 is 3.9e-3


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(digit=10), "digit must be an integer from 0 to 9, got 10"),
        (dict(digit=[1, -1]), "digit must be an integer from 0 to 9, got -1"),
        (dict(digit=3, num_inference_steps=0), "num_inference_steps must be an integer >= 1, got 0"),
        (dict(digit=3, num_images_per_prompt=0), "num_images_per_prompt must be an integer >= 1, got 0"),
        (dict(digit=3, guidance_scale=float("nan")), "guidance_scale must be a finite number >= 0, got nan"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    pipe = DigitsPipeline(transformer=None)  # validation happens before the model is touched
    with pytest.raises(ValueError, match=re.escape(message)):
        pipe(**kwargs)
