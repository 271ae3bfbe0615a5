"""Real diffusers pipelines (tiny, random weights, built offline, saved and loaded back) run by
swiftfusion on several ranks against plain diffusers in one process; ``generate --model``."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from reference import max_rel_err
from tiny_models import LAYOUTS
from tiny_pipelines import CALLS, PER_PROMPT, PIPELINES

from swiftfusion import ParallelConfig, cli, parallelize

PROMPTS = ["a red cat on a tree", "the big blue city"]
CFG_BY_CALLS_FAMILIES = ("flux", "wan", "qwenimage", "hunyuanvideo")  # wan22: pairing per expert


@pytest.fixture(scope="session")
def flux_folder(pipeline_folders):
    return pipeline_folders["flux"]


def pipeline_case(name, folder, options):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)

    def run(output_type):
        per_prompt = {PER_PROMPT.get(name, "num_images_per_prompt"): 2}
        out = pipe(PROMPTS, num_inference_steps=2, output_type=output_type,
                   generator=torch.Generator().manual_seed(0), **per_prompt, **CALLS[name])
        return out.images if hasattr(out, "images") else out.frames

    with torch.no_grad():
        latents, images = run("latent"), run("np")
        parallelize(pipe, ParallelConfig(collective_timeout_s=60, **options))
        parallel_latents, parallel_images = run("latent"), run("np")
    pairing = getattr(pipe.transformer, "_swiftfusion_cfg_pairing", None)
    paired = None if pairing is None else pairing.paired_steps
    return max_rel_err(parallel_latents, latents), float(np.abs(parallel_images - images).max()), paired


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_matches_diffusers(worlds, pipeline_folders, name, layout):
    world, options = LAYOUTS[layout]
    for latent_err, pixel_err, paired in worlds.get(world).run(pipeline_case, name, pipeline_folders[name], options,
                                                               timeout=300):
        assert latent_err <= 1e-4 and pixel_err <= 1 / 255, (latent_err, pixel_err)
        if options.get("cfg_degree") == 2 and name in CFG_BY_CALLS_FAMILIES:
            # One call per branch, two runs of two steps: the first guided step learns the
            # unconditional inputs, every later step (the second run's too: same shapes, same
            # negative prompt) runs its two branches on the two CFG ranks at once.
            assert paired == 3, paired


# One pipeline called again and again in one process: batch sizes, sizes and negative prompts change
# from call to call; the fourth call differs from the third only in its negative prompt, the fifth
# from the fourth in running without guidance.
CALL_SEQUENCES = {
    "flux": [
        dict(prompt=PROMPTS, negative_prompt=["a small dog", "a green cat"], height=20, width=20),
        dict(prompt=["a blue tree"], negative_prompt="a big city", height=24, width=16),
        dict(prompt=["a cat", "a red dog", "the city"], negative_prompt=["a tree", "a photo", "a sunset"], height=16,
             width=24),
        dict(prompt=["a cat", "a red dog", "the city"], negative_prompt=["a dog", "the blue sky", "a cat"], height=16,
             width=24),
        dict(prompt=["a cat", "a red dog", "the city"], negative_prompt=None, height=16, width=24),  # no true CFG
    ],
    "wan": [
        dict(prompt=PROMPTS, negative_prompt=["a small dog", "a green cat"], height=48, width=48),
        dict(prompt=["a blue tree"], negative_prompt="a big city", height=32, width=48),
        dict(prompt=["a cat", "a red dog", "the city"], negative_prompt=["a tree", "a photo", "a sunset"], height=48,
             width=32),
        dict(prompt=["a cat", "a red dog", "the city"], negative_prompt=["a dog", "the blue sky", "a cat"], height=48,
             width=32),
        dict(prompt=["a cat", "a red dog", "the city"], height=48, width=32, guidance_scale=1.0),  # no CFG
    ],
}


def call_sequence(name, folder, options=None):
    """Runs ``CALL_SEQUENCES[name]`` on one pipeline (parallelized with ``options`` unless None), each
    call twice: latents, then decoded. Per run: its output and, when CFG calls are paired, the
    (paired, missed) steps it added."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    if options is not None:
        parallelize(pipe, ParallelConfig(collective_timeout_s=60, **options))
    pairing = getattr(pipe.transformer, "_swiftfusion_cfg_pairing", None)
    results = []
    with torch.no_grad():
        for call in CALL_SEQUENCES[name]:
            for output_type in ("latent", "np"):
                before = None if pairing is None else (pairing.paired_steps, pairing.missed_steps)
                out = pipe(**{**CALLS[name], **call}, num_inference_steps=2, output_type=output_type,
                           generator=torch.Generator().manual_seed(0))
                counts = None if pairing is None else (pairing.paired_steps - before[0],
                                                       pairing.missed_steps - before[1])
                results.append((out.images if hasattr(out, "images") else out.frames, counts))
    return results


@pytest.mark.parametrize("layout", ["data2-cfg2", "cfg2-ulysses2"])
@pytest.mark.parametrize("name", ["flux", "wan"])
def test_cfg_pairing_across_calls_of_other_shapes(worlds, pipeline_folders, name, layout):
    """CFG pairing learns the unconditional call's own arguments (the negative prompt's embeddings)
    and predicts from them; a pipeline called with other batch sizes, sizes and negative prompts
    must still equal plain diffusers call by call, never predicting from another call's shapes."""
    options = {"data2-cfg2": dict(data_degree=2, cfg_degree=2), "cfg2-ulysses2": dict(cfg_degree=2, ulysses_degree=2)}
    reference = call_sequence(name, pipeline_folders[name])
    # (paired, missed) per call, latents then decoded: the latent run of a call with new shapes
    # learns at its first step and pairs the second; the decoded run repeats that call and pairs
    # both steps. The fourth call (new negative prompt, same shapes) predicts its first step from
    # the previous negative prompt, found wrong when the real unconditional call comes (computed
    # then). The fifth (unguided) computes one prediction that no call takes, then stops predicting.
    expected_counts = [(1, 0), (2, 0)] * 3 + [(1, 1), (2, 0), (0, 1), (0, 0)]
    for results in worlds.get(4).run(call_sequence, name, pipeline_folders[name], options[layout], timeout=300):
        for run, ((actual, _counts), (expected, _)) in enumerate(zip(results, reference, strict=True)):
            assert actual.shape == expected.shape, (run, actual.shape, expected.shape)
            if run % 2 == 0:
                assert max_rel_err(torch.as_tensor(actual), torch.as_tensor(expected)) <= 1e-4, run
            else:
                assert np.abs(actual - expected).max() <= 1 / 255, run
        assert [counts for _, counts in results] == expected_counts


def _generate(*args):
    command = [sys.executable, "-m", "swiftfusion", "generate", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.timeout(600)
def test_generate_flux_folder_usp_equals_single_process(flux_folder, tmp_path):
    common = ["--model", flux_folder, "--prompt", "a green tree", "--steps", "2", "--height", "20", "--width", "20",
              "--max-sequence-length", "7", "--num-images", "2", "--seed", "1"]
    _generate(*common, "--output", str(tmp_path / "one.png"))
    _generate(*common, "--output", str(tmp_path / "usp.png"), "--nproc", "4", "--ulysses-degree", "2",
              "--ring-degree", "2")
    one, usp = (np.asarray(Image.open(tmp_path / name)).astype(int) for name in ("one.png", "usp.png"))
    assert one.shape == usp.shape == (2 + 20 + 2, 2 * 22 + 2, 3)  # two 20×20 images side by side
    assert np.abs(one - usp).max() <= 1 and one.std() > 1


@pytest.mark.timeout(600)
def test_generate_video_gif_ulysses_equals_single_process(pipeline_folders, tmp_path):
    common = ["--model", pipeline_folders["wan"], "--prompt", "a blue tree", "--negative-prompt", "a cat",
              "--steps", "2", "--height", "48", "--width", "48", "--num-frames", "9", "--max-sequence-length", "7"]
    _generate(*common, "--output", str(tmp_path / "one.gif"))
    _generate(*common, "--output", str(tmp_path / "parallel.gif"), "--nproc", "2", "--ulysses-degree", "2")
    one, parallel = Image.open(tmp_path / "one.gif"), Image.open(tmp_path / "parallel.gif")
    assert one.n_frames == parallel.n_frames == 9
    for frame in range(9):
        one.seek(frame)
        parallel.seek(frame)
        a, b = (np.asarray(im.convert("RGB")).astype(int) for im in (one, parallel))
        assert a.shape == b.shape == (48, 48, 3)  # one video: the frames themselves, no grid border
        assert np.abs(a - b).max() <= 1


def test_unsupported_pipeline_and_options_are_named(flux_folder, tmp_path, capsys):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    cases = [
        (["--model", str(tmp_path / "other")], "unsupported pipeline class 'StableDiffusionPipeline'; supported: "
         "CogVideoXPipeline, FluxPipeline, HunyuanDiTPipeline, HunyuanVideoPipeline, LattePipeline, "
         "PixArtAlphaPipeline, PixArtSigmaPipeline, QwenImagePipeline, StableDiffusion3Pipeline, WanPipeline"),
        (["--model", flux_folder, "--num-frames", "9"], "--num-frames is not an option of FluxPipeline"),
        (["--model", flux_folder, "--dtype", "float8"],
         "--dtype must be one of float32, bfloat16, float16, got 'float8'"),
        (["--model", flux_folder, "--output", str(tmp_path / "x.gif")],
         f"--output must name a .png file, got {str(tmp_path / 'x.gif')!r}"),
        (["--model", str(tmp_path / "missing")], f"--model {str(tmp_path / 'missing')!r}: no such folder"),
        (["--model", "flux-dev"], "--model 'flux-dev' is not a built-in model (builtin:digits), a pipeline folder, "
         "or a hub id (organisation/name)"),
        (["--height", "32"], "--height is not an option of builtin:digits"),
    ]
    for extra, message in cases:
        argv = ["generate", "--prompt", "3", "--output", str(tmp_path / "x.png"), *extra]
        if "--output" in extra:
            argv = ["generate", "--prompt", "3", *extra]
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert capsys.readouterr().err.strip() == f"swiftfusion: error: {message}"
    assert not (tmp_path / "x.png").exists()
