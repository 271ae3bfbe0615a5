"""``swiftfusion generate`` used as a user would: several prompts and prompts files, per-image seeds,
outputs with metadata and the user's permissions, videos, timing, benchmarking and profiling, and
options that a pipeline would ignore or reject caught before any work."""

import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from swiftfusion import cli
from swiftfusion.pipelines.pipeline_args import pipeline_arguments
from swiftfusion.prompts import Row, batches, image_plan, read_prompts_file


def _generate(*args, umask=None, check=True, env=None):
    command = [sys.executable, "-m", "swiftfusion", "generate", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=400,
                            preexec_fn=None if umask is None else (lambda: os.umask(umask)),
                            env=None if env is None else {**os.environ, **env})
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _error_of(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1].removeprefix("swiftfusion: error: ")


# --- options checked against the pipeline before any work ---------------------------------------

PIPELINE_ERRORS = [
    ("flux", ["--negative-prompt", "a dog"],
     "--negative-prompt has no effect on FluxPipeline unless --true-cfg-scale > 1 (it is 1.0)"),
    ("flux", ["--nproc", "2", "--cfg-degree", "2"],
     "--cfg-degree 2 runs the two guidance branches on two ranks, but FluxPipeline runs one branch here: "
     "classifier-free guidance needs --true-cfg-scale > 1 (it is 1.0) and --negative-prompt"),
    ("flux", ["--nproc", "2", "--use_cfg_parallel", "--true_cfg_scale", "4"],
     "--true_cfg_scale 4.0 has no effect on FluxPipeline without --negative-prompt"),
    ("flux", ["--height", "30"], "--height 30 is not a multiple of 4, which FluxPipeline needs for this model (VAE and "
     "patch size); nearest: 28 or 32"),
    ("sd3", ["--width", "22"], "--width 22 is not a multiple of 4, which StableDiffusion3Pipeline needs for this model "
     "(VAE and patch size); nearest: 20 or 24"),
    ("sd3", ["--guidance-scale", "1", "--negative-prompt", "x"],
     "--negative-prompt has no effect on StableDiffusion3Pipeline unless --guidance-scale > 1 (it is 1.0)"),
    ("pixart", ["--height", "40", "--width", "40"],
     "PixArtSigmaPipeline's resolution binning (on by default) needs a transformer sample_size of 32, 64, 128, 256; "
     "this model's is 10: pass --pipeline-arg use_resolution_binning=false"),
    ("pixart", ["--height", "36", "--pipeline-arg", "use_resolution_binning=false"],
     "--height 36 is not a multiple of 8, which PixArtSigmaPipeline needs for this model (VAE and patch size); "
     "nearest: 32 or 40"),
    ("wan", ["--num-frames", "10", "--output", "x.gif"],
     "--num-frames 10: WanPipeline takes 4 × k + 1 frames for this VAE; nearest: 9 or 13"),
    ("wan", ["--height", "40", "--output", "x.gif"],
     "--height 40 is not a multiple of 16, which WanPipeline needs for this model (VAE and patch size); nearest: 32 "
     "or 48"),
    ("wan", ["--guidance-scale-2", "3", "--output", "x.gif"],
     "--guidance-scale-2 is for two-expert (Wan 2.2) pipelines; this WanPipeline has no boundary_ratio"),
    ("wan22", ["--guidance-scale-2", "3", "--guidance-scale", "1", "--output", "x.gif"],
     "--guidance-scale-2 has no effect unless --guidance-scale > 1 (it is 1.0)"),
    ("latte", ["--num-frames", "8", "--output", "x.gif"],
     "--num-frames 8: this LattePipeline's transformer takes 1 or 3 frames"),
    ("flux", ["--guidance-scale", "5"], "--guidance-scale has no effect on this FluxPipeline: its transformer is not "
     "guidance-distilled (guidance_embeds is false)"),
    ("flux", ["--prompts-file", "rows.jsonl"], "--output makes one grid of all images, which needs one size; rows of "
     "--prompts-file set several: use --output-dir"),
    ("sd3", ["--prompts_file", "bad_rows.jsonl"], "row 2 of --prompts_file '{tmp}/bad_rows.jsonl': width 22 is not a "
     "multiple of 4, which StableDiffusion3Pipeline needs for this model (VAE and patch size); nearest: 20 or 24"),
    ("flux", ["--max-sequence-length", "600"], "--max-sequence-length 600: FluxPipeline takes at most 512"),
    ("wan", ["--fps", "0", "--output", "x.gif"], "--fps must be a positive number, got 0.0"),
    ("flux", ["--fps", "8"], "--fps is for video pipelines; FluxPipeline makes images"),
    ("flux", ["--pipeline-arg", "height=8"], "--pipeline-arg height: use --height"),
    ("flux", ["--pipeline-arg", "generator=1"], "--pipeline-arg generator: set by swiftfusion for every call, not "
     "settable"),
    ("flux", ["--pipeline-arg", "latents=1"], "--pipeline-arg latents: a FloatTensor or none cannot be given on the "
     "command line"),
    ("flux", ["--pipeline-arg", "sigmas=fast"], "--pipeline-arg sigmas expects a JSON list or none, got 'fast'"),
    ("flux", ["--pipeline-arg", "nonsense"], "--pipeline-arg takes KEY=VALUE, got 'nonsense'"),
    ("flux", ["--num-frames", "9"], "--num-frames is not an option of FluxPipeline"),
]


@pytest.mark.parametrize("name,extra,message", PIPELINE_ERRORS)
def test_pipeline_options_are_checked_before_any_work(no_work, capsys, tmp_path, pipeline_folders, name, extra,
                                                      message):
    output = ["--output", str(tmp_path / "x.png")] if "--output" not in extra else []
    (tmp_path / "rows.jsonl").write_text('{"prompt": "a cat"}\n{"prompt": "a dog", "size": "24x16"}\n')
    (tmp_path / "bad_rows.jsonl").write_text('{"prompt": "a cat"}\n{"prompt": "a dog", "size": "22x20"}\n')
    extra = [str(tmp_path / e) if e in ("x.gif", "rows.jsonl", "bad_rows.jsonl") else e for e in extra]
    prompt = [] if {"--prompts-file", "--prompts_file"} & set(extra) else ["--prompt", "a cat"]
    argv = ["generate", "--model", pipeline_folders[name], *prompt, *output, *extra]
    assert _error_of(argv, capsys) == message.format(tmp=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_rows.jsonl", "rows.jsonl"]


def test_unknown_pipeline_argument_lists_the_settable_ones(no_work, capsys, tmp_path, pipeline_folders):
    error = _error_of(["generate", "--model", pipeline_folders["sd3"], "--prompt", "a", "--output",
                       str(tmp_path / "x.png"), "--pipeline-arg", "colour=red"], capsys)
    assert error.startswith("--pipeline-arg colour: StableDiffusion3Pipeline takes no argument 'colour'; it takes ")
    assert "skip_guidance_layers" in error and "latents" not in error.split("it takes")[1]


def test_pipeline_arguments_are_typed_by_the_signature():
    typed = pipeline_arguments(
        "FluxPipeline", ["sigmas=[1.0, 0.5]", "joint_attention_kwargs={\"scale\": 0.5}", "prompt_2=a big cat"], {})
    assert typed == {"sigmas": [1.0, 0.5], "joint_attention_kwargs": {"scale": 0.5}, "prompt_2": "a big cat"}
    pixart = pipeline_arguments(
        "PixArtSigmaPipeline", ["use_resolution_binning=false", "eta=0.5", "clean_caption=yes"], {})
    assert pixart == {"use_resolution_binning": False, "eta": 0.5, "clean_caption": True}
    assert pipeline_arguments("FluxPipeline", ["sigmas=none"], {}) == {"sigmas": None}


def test_missing_folders_and_unreachable_hub_fail_fast(no_work, capsys, tmp_path, monkeypatch):
    assert _error_of(["generate", "--model", "./no-such-model", "--prompt", "a", "--output", "x.png"], capsys) == \
        "--model './no-such-model': no such folder"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert _error_of(["generate", "--model", "models/flux", "--prompt", "a", "--output", "x.png"], capsys) == \
        "--model 'models/flux': no such folder"
    # A hub id with no hub to reach (a closed port on this machine): a clear error within seconds.
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.monotonic()
    error = _error_of(["generate", "--model", "someone/some-model", "--prompt", "a", "--output", "x.png"], capsys)
    assert time.monotonic() - start < 10
    assert error.startswith("--model 'someone/some-model' is not a local folder, and the hub (http://127.0.0.1:9) "
                            "cannot be reached: ")
    assert error.endswith("Give the path of a pipeline folder, or download the model first")


def test_files_not_written_by_swiftfusion_are_not_replaced_silently(no_work, capsys, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "001.png").write_bytes(b"a user's picture")
    (tmp_path / "out" / "notes.txt").write_text("mine")
    argv = ["generate", "--prompt", "3", "--num-images", "2", "--output-dir", str(tmp_path / "out")]
    assert _error_of(argv, capsys) == (f"--output-dir {str(tmp_path / 'out')!r} already holds files this run would "
                                       "replace, not written by swiftfusion (001.png); pass --overwrite to replace "
                                       "them, or choose another folder")
    (tmp_path / "out" / "001.png").rename(tmp_path / "out" / "009.png")
    job, _ = cli.check_generate_args(cli.build_parser().parse_args(argv), cli.Flags(cli.build_parser(), argv))
    assert job.output_dir == str(tmp_path / "out")  # other names: no clash, so no refusal


def test_digits_api_seeds_each_image(tmp_path):
    """``seed=s`` seeds image i with s + i, as the CLI does: any image can be made again alone."""
    from swiftfusion import DigitsPipeline

    pipe = DigitsPipeline.from_pretrained()
    pair = pipe(7, num_images_per_prompt=2, num_inference_steps=2, seed=5, show_progress=False).images
    second = pipe(7, num_inference_steps=2, seed=6, show_progress=False).images
    listed = pipe([7, 7], num_inference_steps=2, seed=[5, 6], show_progress=False).images
    assert torch.allclose(pair[1], second[0], atol=1e-6) and torch.allclose(pair, listed, atol=1e-6)


def test_every_flag_has_help_and_the_version_prints(capsys):
    generate = cli._generate_parser(cli.build_parser())
    missing = [a.option_strings for a in generate._actions if a.option_strings and not a.help]
    assert missing == []
    titles = [group.title for group in generate._action_groups]
    assert "topology (for --sp-layout auto and TAPA)" in titles
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    from swiftfusion import __version__

    assert capsys.readouterr().out.strip() == f"swiftfusion {__version__}"
    with pytest.raises(SystemExit):  # no abbreviations: --num-i could mean several flags
        cli.main(["generate", "--prompt", "3", "--output", "x.png", "--num-i", "2"])
    assert "unrecognized arguments: --num-i (did you mean --num-images or --num-frames?) 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["generate", "--promt", "3", "--output", "x.png"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "swiftfusion generate: error: unrecognized arguments: --promt (did you mean --prompt or --nproc or "
        "--prompts-file?) 3")


# --- prompts, seeds and names ---------------------------------------------------------------------

def test_prompts_files_in_three_formats(tmp_path):
    (tmp_path / "p.txt").write_text("a red cat\n\n  the big city  \n")
    (tmp_path / "p.csv").write_text("\ufeffid,prompt,seed,negative_prompt\n1,a red cat,7,\n"
                                    "2,\"a dog, small\non two lines\",,blurry\n", encoding="utf-8")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat", "size": "40x24"}\n\n{"prompt": "a dog", "height": 8, '
                                      '"width": 16, "seed": 3}\n')
    assert read_prompts_file(str(tmp_path / "p.txt")) == [Row("a red cat"), Row("the big city")]
    assert read_prompts_file(str(tmp_path / "p.csv")) == [Row("a red cat", seed=7),
                                                         Row("a dog, small\non two lines", negative_prompt="blurry")]
    assert read_prompts_file(str(tmp_path / "p.jsonl")) == [Row("a cat", height=24, width=40),
                                                           Row("a dog", seed=3, height=8, width=16)]
    bad = {
        "b.csv": ("text,seed\na,1\n", "a CSV file needs a header with a 'prompt' column, got ['text', 'seed']"),
        "c.jsonl": ('{"prompt": "a", "steps": 3}\n', "line 1: unknown key 'steps'; allowed: prompt, negative_prompt, "
                    "seed, height, width, size"),
        "d.jsonl": ('{"prompt": "a"}\n{"prompt": "b", "size": "big"}\n',
                    "line 2: 'size' must be WIDTHxHEIGHT (e.g. 1024x768), got 'big'"),
        "e.jsonl": ('{"prompt": "a", "seed": -2}\n', "line 1: 'seed' must be an integer >= 0, got -2"),
        "f.jsonl": ("[1]\n", "line 1: expected an object like {\"prompt\": ...}"),
        "g.txt": ("\n\n", "no prompts in it"),
        "h.jsonl": ('{"prompt": "a", "height": 8}\n', "line 1: give both 'height' and 'width' (or 'size'), not one"),
    }
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError) as error:
            read_prompts_file(str(tmp_path / name))
        assert str(error.value) == f"--prompts-file {str(tmp_path / name)!r}" + (
            ": " if not message.startswith("line") else " ") + message


def test_seeds_names_and_batches():
    rows = [Row("a"), Row("b", seed=100), Row("c", height=8, width=8), Row("d", height=8, width=8)]
    images = image_plan(rows, 2, seed=5)
    assert [(i.name, i.seed) for i in images] == [
        ("000-00", 5), ("000-01", 6), ("001-00", 100), ("001-01", 101), ("002-00", 9), ("002-01", 10),
        ("003-00", 11), ("003-01", 12)]
    assert [i.name for i in image_plan([Row("a")], 3, 0)] == ["000", "001", "002"]
    assert [i.name for i in image_plan(rows[:2], 1, 0)] == ["000", "001"]
    assert [i.name for i in image_plan([Row("a")] * 1001, 1, 0)][-2:] == ["0999", "1000"]
    assert [i.name for i in image_plan(rows[:2], 100, 0)][-1] == "001-99"
    assert [c.rows for c in batches(rows, images, batch_size=2)] == [[0, 1], [2, 3]]
    assert [c.rows for c in batches(rows, images, batch_size=1)] == [[0], [1], [2], [3]]
    assert [image.seed for image in batches(rows, images, 3)[1].images] == [9, 10, 11, 12]


# --- real runs --------------------------------------------------------------------------------------

@pytest.mark.timeout(600)
def test_prompts_file_data_parallel_equals_one_process_with_metadata(pipeline_folders, tmp_path):
    """10 rows on 2 data-parallel ranks: 10 images named by row, each equal to the single-process
    image of its row and seed, each with its metadata; files get the user's umask permissions."""
    prompts = tmp_path / "prompts.txt"
    words = ["a red cat", "a blue dog", "the big city", "a small tree", "a green photo", "the sunset",
             "a cat on a tree", "the dog in the city", "a red painting", "the blue sunset"]
    prompts.write_text("\n".join(words) + "\n")
    common = ["--model", pipeline_folders["sd3"], "--prompts-file", str(prompts), "--steps", "2", "--height", "20",
              "--width", "20", "--max-sequence-length", "7", "--seed", "40"]
    run = _generate(*common, "--output-dir", str(tmp_path / "dp"), "--nproc", "2", "--data-degree", "2",
                    umask=0o027)
    _generate(*common, "--output-dir", str(tmp_path / "one"))
    names = [f"{i:03d}" for i in range(10)]
    assert sorted(p.name for p in (tmp_path / "dp").iterdir()) == sorted(
        [f"{n}.png" for n in names] + [f"{n}.json" for n in names] + [".swiftfusion-outputs.json"])
    for i, name in enumerate(names):
        parallel, one = tmp_path / "dp" / f"{name}.png", tmp_path / "one" / f"{name}.png"
        assert np.abs(_pixels(parallel) - _pixels(one)).max() <= 1
        meta = json.loads((tmp_path / "dp" / f"{name}.json").read_text())
        assert (meta["prompt"], meta["seed"], meta["steps"], meta["guidance_scale"]) == (words[i], 40 + i, 2, 7.0)
        assert meta["layout"]["data_degree"] == 2 and meta["world_size"] == 2
        assert set(meta["timings"]) == {"load_s", "batch_encode_s", "batch_denoise_s", "batch_decode_s",
                                        "batch_total_s", "step_median_s"}
        assert json.loads(Image.open(parallel).text["swiftfusion"]) == meta
        assert Image.open(parallel).text["prompt"] == words[i]
        assert stat.S_IMODE(parallel.stat().st_mode) == 0o640  # 0666 under the umask 027
    assert _pixels(tmp_path / "one" / "000.png").std() > 1
    # Only rank 0 prints: one loading bar, a denoising bar per call (5 calls of 2 rows), one report.
    assert run.stderr.count("Loading pipeline components...:   0%") == 1, run.stderr
    assert run.stderr.count("  0%|          | 0/2 [") == 5, run.stderr
    assert run.stderr.count("`CLIPImageProcessor` requires torchvision") <= 1, run.stderr
    assert "deprecated" not in run.stderr  # diffusers' torch_dtype deprecation: we pass dtype
    assert run.stdout.count("time: start") == 1 and "peak memory per rank (resident set): rank 0 " in run.stdout


@pytest.mark.timeout(600)
def test_rgb_output_dir_negative_prompts_and_overwrite(pipeline_folders, tmp_path):
    """Flux with true CFG on two CFG ranks, per-row negative prompts, seeds and sizes from JSONL;
    an output dir is not overwritten by accident, and --overwrite leaves no stale files."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "a red cat", "negative_prompt": "a dog", "seed": 11}\n'
                    '{"prompt": "a blue tree", "negative_prompt": "a city", "size": "24x16"}\n')
    common = ["--model", pipeline_folders["flux"], "--prompts-file", str(rows), "--steps", "2", "--height", "20",
              "--width", "20", "--max-sequence-length", "7", "--true-cfg-scale", "2"]
    _generate(*common, "--output-dir", str(tmp_path / "cfg"), "--nproc", "2", "--cfg-degree", "2")
    _generate(*common, "--output-dir", str(tmp_path / "one"))
    for name, size in (("000", (20, 20)), ("001", (24, 16))):
        a, b = _pixels(tmp_path / "cfg" / f"{name}.png"), _pixels(tmp_path / "one" / f"{name}.png")
        assert a.shape == b.shape == (size[1], size[0], 3)
        assert np.abs(a - b).max() <= 1
    meta = [json.loads((tmp_path / "cfg" / f"{n}.json").read_text()) for n in ("000", "001")]
    assert [(m["negative_prompt"], m["seed"], m["true_cfg_scale"]) for m in meta] == [("a dog", 11, 2.0),
                                                                                    ("a city", 1, 2.0)]
    assert (meta[1]["height"], meta[1]["width"]) == (16, 24)
    refused = _generate(*common[:2], "--prompt", "a cat", "--steps", "1", "--output-dir", str(tmp_path / "cfg"),
                        check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (f"swiftfusion: error: --output-dir {str(tmp_path / 'cfg')!r} already holds 4 "
                                      "files of an earlier run (000.json, 000.png, 001.json, ...); pass --overwrite "
                                      "to replace them, or choose another folder")
    (tmp_path / "cfg" / "005.png").write_bytes(b"not ours")  # a user's file: left alone
    _generate(*common[:2], "--prompt", "a cat", "--steps", "1", "--height", "20", "--width", "20", "--output-dir",
              str(tmp_path / "cfg"), "--overwrite", "--no-metadata")
    assert sorted(p.name for p in (tmp_path / "cfg").iterdir()) == [".swiftfusion-outputs.json", "000.png", "005.png"]


@pytest.mark.timeout(600)
def test_pixart_ring_equals_one_process_with_its_older_step_callback(pipeline_folders, tmp_path):
    """PixArt reports steps through its older ``callback``; one image is written as itself."""
    common = ["--model", pipeline_folders["pixart"], "--prompt", "a red cat", "--steps", "2", "--height", "40",
              "--width", "40", "--max-sequence-length", "7", "--pipeline-arg", "use_resolution_binning=false",
              "--pipeline-arg", "clean_caption=false"]
    run = _generate(*common, "--output", str(tmp_path / "ring.png"), "--nproc", "2", "--ring-degree", "2")
    _generate(*common, "--output", str(tmp_path / "one.png"))
    a, b = _pixels(tmp_path / "ring.png"), _pixels(tmp_path / "one.png")
    assert a.shape == b.shape == (40, 40, 3) and np.abs(a - b).max() <= 1
    assert "(2 steps, median" in run.stdout
    meta = json.loads((tmp_path / "ring.json").read_text())["images"][0]
    assert (meta["use_resolution_binning"], meta["clean_caption"], meta["layout"]["ring_degree"]) == (False, False, 2)


@pytest.mark.timeout(600)
def test_video_as_mp4_and_gif(pipeline_folders, tmp_path):
    import imageio_ffmpeg

    common = ["--model", pipeline_folders["wan"], "--prompt", "a blue tree", "--steps", "2", "--height", "48",
              "--width", "48", "--num-frames", "9", "--max-sequence-length", "7", "--fps", "10"]
    _generate(*common, "--output-dir", str(tmp_path / "videos"), "--nproc", "2", "--ulysses-degree", "2")
    _generate(*common, "--output", str(tmp_path / "one.gif"))
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == [".swiftfusion-outputs.json", "000.json",
                                                                       "000.mp4"]
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "videos" / "000.mp4"))
    info = next(reader)
    frames = list(reader)
    assert (info["size"], info["fps"], len(frames)) == ((48, 48), 10.0, 9)
    gif = Image.open(tmp_path / "one.gif")
    assert (gif.n_frames, gif.size, gif.info["duration"]) == (9, (48, 48), 100)
    assert json.loads((tmp_path / "one.json").read_text())["images"][0]["seed"] == 0


def test_videos_fall_back_to_gif_without_an_encoder(no_work, capsys, tmp_path, pipeline_folders, monkeypatch):
    monkeypatch.setattr("swiftfusion.images.video_encoder_available", lambda: False)
    common = ["generate", "--model", pipeline_folders["wan"], "--prompt", "a", "--height", "48", "--width", "48"]
    assert _error_of([*common, "--output", str(tmp_path / "v.mp4")], capsys) == (
        "--output .mp4 needs the ffmpeg of imageio-ffmpeg: pip install 'swiftfusion[video]' (or write a .gif)")
    job, _ = cli.check_generate_args(cli.build_parser().parse_args([*common, "--output-dir", str(tmp_path / "v")]),
                                     cli.Flags(cli.build_parser(), []))
    assert job.suffix == ".gif"


@pytest.mark.timeout(600)
def test_single_image_has_no_border_and_benchmark_and_profile(tmp_path):
    run = _generate("--prompt", "4", "--steps", "3", "--output", str(tmp_path / "four.png"), "--nproc", "2",
                    "--ulysses-degree", "2", "--warmup", "1", "--iterations", "3", "--profile", str(tmp_path / "trace"))
    assert Image.open(tmp_path / "four.png").size == (32, 32)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert (report["warmup"], report["iterations"], report["world_size"]) == (1, 3, 2)
    assert report["total_s"]["min"] <= report["total_s"]["median"] <= report["total_s"]["max"]
    assert report["layout"]["ulysses_degree"] == 2 and len(report["peak_memory_bytes"]) == 2
    assert "benchmark: 3 iterations after 1 warm-up: total median" in run.stdout
    for rank in range(2):
        events = json.loads((tmp_path / "trace" / f"rank{rank}.json").read_text())["traceEvents"]
        names = {event.get("name", "") for event in events}
        assert any(n.startswith("gloo:all_to_all") or n.startswith("c10d::alltoall") for n in names), names
        assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names or "aten::bmm" in names \
            or any("attention" in n for n in names)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum,code,line", [(2, 130, "swiftfusion: interrupted"),
                                              (15, 143, "swiftfusion: terminated")])
def test_interrupted_generate_stops_cleanly(tmp_path, signum, code, line):
    """Ctrl-C (SIGINT to the whole process group) or SIGTERM to the command while its ranks denoise:
    one line, the shell's exit code, no traceback, nothing written, no scratch folder left."""
    import signal

    (tmp_path / "tmp").mkdir()
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "swiftfusion", "generate", "--prompt", "3", "--steps", "100000", "--output",
             str(tmp_path / "x.png"), "--nproc", "2", "--ulysses-degree", "2"],
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
            env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    try:
        deadline = time.monotonic() + 90
        while "denoising:" not in log.read_text():  # rank 0's progress bar: the ranks are in the loop
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        if signum == signal.SIGINT:
            os.killpg(process.pid, signum)  # as a terminal does: to the command and every rank
        else:
            process.send_signal(signum)  # as a supervisor does: to the command only
        assert process.wait(timeout=20) == code
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    text = log.read_text()
    assert text.endswith(f"\n{line}\n"), text
    assert "Traceback" not in text and "leaked semaphore" not in text, text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stderr.txt", "tmp"]
    assert list((tmp_path / "tmp").glob("swiftfusion-*")) == []  # the launcher's scratch folder
