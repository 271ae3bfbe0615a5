"""Ranks that call a parallelized pipeline differently all fail at once, with the same message
naming the difference; the same call on every rank runs as before (and matches one process)."""

import json
import os
import re

import pytest
import torch
from reference import max_rel_err
from tiny_pipelines import CALLS

from swiftfusion import DigitsPipeline, ParallelConfig, comm, parallelize, runtime
from swiftfusion.mesh import build_mesh
from swiftfusion.pipelines.agreement import check_calls, disagreement, fingerprint, uncheck_calls

TAIL = "; every rank must make the same call (same prompts, seeds, sizes)"
PROMPTS = ["a red cat on a tree", "the big blue city"]


def disagree(*differences: str) -> str:
    return f"ranks disagree on the pipeline call: {'; '.join(differences)}{TAIL}"


def error_of(call) -> str | None:
    """The ValueError's message (caught here, so that the world stays healthy), or None."""
    try:
        call()
    except ValueError as error:
        return str(error)
    return None


def per_rank(on_rank_0, on_rank_1):
    return on_rank_0 if runtime.rank() == 0 else on_rank_1


def gather_case():
    mesh = build_mesh(ParallelConfig(data_degree=2, collective_timeout_s=30))
    mine = {"rank": runtime.rank(), "text": "x" * (10 + 1000 * runtime.rank())}  # different sizes
    return comm.all_gather_object(mine), comm.all_gather_object(runtime.rank(), mesh.data)


def test_all_gather_object_gathers_any_size_in_rank_order(worlds):
    expected = [{"rank": 0, "text": "x" * 10}, {"rank": 1, "text": "x" * 1010}]
    assert worlds.get(2).run(gather_case) == [(expected, [0, 1])] * 2


def test_disagreement_names_the_first_differing_rank_and_missing_arguments():
    ranks = [fingerprint({"height": 32, "width": 32}), fingerprint({"height": 32.0, "width": 32}),
             fingerprint({"height": 48, "extra": None})]
    assert disagreement(ranks) == disagree("height is 32 on rank 0 but 48 on rank 2",
                                           "width is 32 on rank 0 but not passed on rank 2",
                                           "extra is not passed on rank 0 but None on rank 2")
    assert disagreement(ranks[:2]) is None  # 32.0 is 32; show_progress and self are not compared
    long = "a photo of a " + "very " * 30
    message = disagreement([fingerprint({"prompt": long + "red cat"}), fingerprint({"prompt": long + "blue cat"})])
    assert message == disagree("prompt is ...very very very very red cat' on rank 0 but "
                               "...very very very very blue cat' on rank 1")  # around the first difference


@pytest.fixture(scope="module")
def digits_reference():
    torch.set_num_threads(1)
    return DigitsPipeline.from_pretrained()(3, num_images_per_prompt=2, num_inference_steps=2, show_progress=False)


def digits_case(degrees, argument, on_rank_0, on_rank_1, reference):
    pipe = parallelize(DigitsPipeline.from_pretrained(), ParallelConfig(**degrees, collective_timeout_s=30))
    call = dict(digit=3, num_images_per_prompt=2, num_inference_steps=2, seed=0)
    message = error_of(lambda: pipe(**{**call, argument: per_rank(on_rank_0, on_rank_1)}, show_progress=False))
    # The same call (progress shown on rank 0 only, as the CLI does) still works after the failed one.
    images = pipe(**call, show_progress=per_rank(True, False)).images
    return message, float((images - reference.images).abs().max())


@pytest.mark.parametrize("degrees", [dict(data_degree=2), dict(ulysses_degree=2)], ids=lambda d: str(d))
@pytest.mark.parametrize("argument,on_rank_0,on_rank_1,shown", [
    ("digit", 3, 5, "digit is 3 on rank 0 but 5 on rank 1"),
    ("seed", 0, 1, "seed is 0 on rank 0 but 1 on rank 1"),
    ("num_images_per_prompt", 2, 1, "num_images_per_prompt is 2 on rank 0 but 1 on rank 1"),
])
def test_digits_ranks_that_disagree_fail_with_the_difference(worlds, digits_reference, degrees, argument, on_rank_0,
                                                             on_rank_1, shown):
    results = worlds.get(2).run(digits_case, degrees, argument, on_rank_0, on_rank_1, digits_reference)
    for message, max_abs in results:
        assert message == disagree(shown)
        assert max_abs <= 1e-4


def flux_case(folder: str, save_to: str):
    from diffusers import DiffusionPipeline, FluxPipeline

    torch.set_num_threads(1)
    pipe = DiffusionPipeline.from_pretrained(folder, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)

    def run(per_prompt=1, seed=0, **changes):
        call = dict(CALLS["flux"], prompt=PROMPTS, num_inference_steps=2, output_type="latent",
                    num_images_per_prompt=per_prompt, generator=torch.Generator().manual_seed(seed))
        return pipe(**{**call, **changes}).images

    with torch.no_grad():
        references = [run(per_prompt=1), run(per_prompt=2)]
        parallelize(pipe, ParallelConfig(ulysses_degree=2, collective_timeout_s=60))
        checking_class = type(pipe)
        advanced = torch.Generator().manual_seed(0)
        if runtime.rank() == 1:
            torch.randn(1, generator=advanced)
        errors = {
            "prompt": error_of(lambda: run(prompt=per_rank(PROMPTS, [PROMPTS[0], "the big red city"]))),
            "seed": error_of(lambda: run(seed=per_rank(0, 1))),
            "state": error_of(lambda: run(generator=advanced)),
            "height": error_of(lambda: run(height=per_rank(20, 24))),
            "unknown": error_of(lambda: run(**per_rank({}, {"colour": "red"}))),
        }
        # The same call on every rank, twice, with two batch sizes, after the failed ones.
        errs = [max_rel_err(run(per_prompt=per_prompt), reference)
                for per_prompt, reference in zip((1, 2), references, strict=True)]
    check_calls(pipe)  # again: nothing changes
    twice = type(pipe) is checking_class
    folder = os.path.join(save_to, f"rank{runtime.rank()}")
    pipe.save_pretrained(folder)
    with open(os.path.join(folder, "model_index.json")) as f:
        saved_class = json.load(f)["_class_name"]
    names = (type(pipe).__name__, type(pipe).__qualname__, type(pipe).__module__, repr(pipe).split()[0])
    kinds = (type(pipe) is not FluxPipeline, isinstance(pipe, FluxPipeline))
    uncheck_calls(pipe)
    undone = type(pipe) is FluxPipeline
    return errors, errs, twice, saved_class, names, kinds, undone


def test_diffusers_ranks_that_disagree_fail_and_the_same_call_matches_one_process(worlds, pipeline_folders,
                                                                                  tmp_path):
    results = worlds.get(2).run(flux_case, pipeline_folders["flux"], str(tmp_path), timeout=300)
    for errors, errs, twice, saved_class, names, kinds, undone in results:
        assert errors["prompt"] == disagree(
            "prompt is ['a red cat on a tree', 'the big blue city'] on rank 0 but "
            "['a red cat on a tree', 'the big red city'] on rank 1")
        assert errors["seed"] == disagree(
            "generator is torch.Generator(initial_seed=0) on rank 0 but torch.Generator(initial_seed=1) on rank 1")
        assert re.fullmatch(re.escape(disagree(
            "generator is torch.Generator(initial_seed=0) (fingerprint X) on rank 0 but "
            "torch.Generator(initial_seed=0) (fingerprint X) on rank 1")).replace("X", "[0-9a-f]{8}"), errors["state"])
        assert errors["height"] == disagree("height is 20 on rank 0 but 24 on rank 1")
        assert errors["unknown"] == disagree("colour is not passed on rank 0 but 'red' on rank 1")
        assert max(errs) <= 1e-4, errs
        assert twice and undone
        assert saved_class == "FluxPipeline"
        assert names == ("FluxPipeline", "FluxPipeline", "diffusers.pipelines.flux.pipeline_flux", "FluxPipeline")
        assert kinds == (True, True)
