"""``swiftfusion generate``: bad input rejected before any work, and the parallel image equals the
single-process one."""

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from swiftfusion import cli


def _error_of(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--prompt", "12"], "--prompt: builtin:digits draws a digit from 0 to 9, got '12'"),
        (["--prompt", "-1"], "--prompt: builtin:digits draws a digit from 0 to 9, got '-1'"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--num_inference_steps", "0"], "--num_inference_steps must be >= 1, got 0"),
        (["--num-images", "0"], "--num-images must be >= 1, got 0"),
        (["--model", "builtin:flux"], "unknown model 'builtin:flux'; available: builtin:digits"),
        (["--prompt", "seven"], "--prompt: builtin:digits draws a digit from 0 to 9, got 'seven'"),
        (["--nproc", "4", "--ulysses-degree", "3"],
         "the parallel degrees multiply to 3 (data 1 × cfg 1 × pipefusion 1 × ulysses 3 × ring 1) but the world "
         "size is 4; choose degrees whose product is 4"),
        (["--nproc", "2", "--ring-degree", "0"], "--ring-degree must be a positive integer (1, 2, 3, ...), got 0"),
        (["--nproc", "2", "--ring_degree", "0"], "--ring_degree must be a positive integer (1, 2, 3, ...), got 0"),
        (["--nproc", "2", "--cfg-degree", "-2"], "--cfg-degree must be a positive integer (1, 2, 3, ...), got -2"),
        (["--nproc", "0"], "--nproc must be >= 1, got 0"),
        (["--nproc", "4", "--ulysses-degree", "4", "--sp-layout", "ring"],
         "--sp-layout must be one of usp, tas, auto, got 'ring'"),
        (["--nproc", "4", "--ulysses-degree", "4", "--all-to-all", "tree"],
         "--all-to-all must be one of flat, tapa, got 'tree'"),
        (["--nproc", "4", "--ulysses-degree", "2", "--sp_algorithm", "torus", "--ring_degree", "2"],
         "--sp_algorithm torus runs over the Ulysses group; --ring_degree must be 1, got 2"),
        (["--nproc", "2", "--cfg-degree", "2", "--guidance-scale", "1"],
         "--cfg-degree 2 runs the guidance branches on two ranks, but --guidance-scale 1.0 turns guidance off (it "
         "must be > 1); use --cfg-degree 1 or a larger --guidance-scale"),
        (["--nproc", "2", "--use_cfg_parallel", "--guidance_scale", "1"],
         "--cfg-degree 2 runs the guidance branches on two ranks, but --guidance_scale 1.0 turns guidance off (it "
         "must be > 1); use --cfg-degree 1 or a larger --guidance_scale"),
        (["--nproc", "4", "--ulysses-degree", "4", "--ranks-per-node", "3"],
         "--ranks-per-node 3 must be a positive divisor of the world size 4"),
        (["--inter-node-link", "fast"],
         "--inter-node-link: a link is GBIT_PER_S or GBIT_PER_S,LATENCY_US (e.g. 400,5), got 'fast'"),
        (["--intra-node-link", "100,-1"], "--intra-node-link: link latency_us must be a number >= 0, got -1.0"),
        (["--nproc", "2", "--pipefusion_parallel_degree", "2"],
         "--pipefusion_parallel_degree 2 is not supported yet (PipeFusion is not built); allowed: 1"),
        (["--warmup_steps", "1"], "--warmup_steps is a PipeFusion option, and PipeFusion is not built yet"),
        (["--num_pipeline_patch", "4"], "--num_pipeline_patch is a PipeFusion option, and PipeFusion is not built yet"),
        (["--use_torch_compile"], "--use_torch_compile: torch.compile is not built yet"),
        (["--use_parallel_vae"], "--use_parallel_vae: parallel VAE decode is not built yet"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--iterations", "0"], "--iterations must be >= 1, got 0"),
        (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
        (["--fps", "8"], "--fps is not an option of builtin:digits"),
        (["--pipeline-arg", "eta=1"], "--pipeline-arg is not an option of builtin:digits"),
        (["--prompts-file", "missing.txt"], "give --prompt or --prompts-file, not both"),
    ],
)
def test_bad_input_is_named_before_any_work(no_work, capsys, tmp_path, extra, message):
    argv = ["generate", "--prompt", "3", "--output", str(tmp_path / "x.png"), *extra]
    assert _error_of(argv, capsys) == f"swiftfusion: error: {message}"
    assert list(tmp_path.iterdir()) == []


def test_unwritable_outputs_are_named(no_work, capsys, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    cases = {
        str(tmp_path / "missing" / "x.png"): f"--output {str(tmp_path / 'missing' / 'x.png')!r}: the directory "
                                             f"{str(tmp_path / 'missing')!r} does not exist",
        str(a_file / "x.png"): f"--output {str(a_file / 'x.png')!r}: the directory {str(a_file)!r} does not exist",
        str(tmp_path / "x.jpg"): f"--output must name a .png file, got {str(tmp_path / 'x.jpg')!r}",
        "/proc/x.png": "--output '/proc/x.png': cannot write in '/proc'",
    }
    for path, message in cases.items():
        error = _error_of(["generate", "--prompt", "3", "--output", path], capsys)
        assert error.startswith(f"swiftfusion: error: {message}"), error
    error = _error_of(["generate", "--prompt", "3", "--output-dir", str(a_file)], capsys)
    assert error == f"swiftfusion: error: --output-dir {str(a_file)!r} exists and is not a directory"


def _generate(*args):
    command = [sys.executable, "-m", "swiftfusion", "generate", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def _pixels(path):
    return np.asarray(Image.open(path)).astype(int)


@pytest.mark.timeout(400)
def test_usp_image_equals_single_process_image(tmp_path):
    common = ["--prompt", "7", "--num-images", "8", "--steps", "25", "--seed", "0"]
    _generate(*common, "--output", str(tmp_path / "one.png"), "--nproc", "1")
    run = _generate(*common, "--output", str(tmp_path / "usp.png"), "--nproc", "4",
                    "--ulysses-degree", "2", "--ring-degree", "2")
    one, usp = _pixels(tmp_path / "one.png"), _pixels(tmp_path / "usp.png")
    assert one.shape == usp.shape == (3 * 34 + 2, 3 * 34 + 2)  # 8 images in a 3×3 grid of 32 px + 2 px gaps
    assert np.abs(one - usp).max() <= 1
    assert one.std() > 10  # a real picture, not a blank
    assert re.search(r"wrote .*usp\.png", run.stdout)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


@pytest.mark.timeout(400)
def test_topology_aware_options_give_the_same_image(tmp_path):
    common = ["--prompt", "9", "--num-images", "4", "--steps", "5", "--seed", "2"]
    _generate(*common, "--output", str(tmp_path / "one.png"))
    _generate(*common, "--output", str(tmp_path / "tapa.png"), "--nproc", "4", "--ulysses-degree", "4",
              "--ranks-per-node", "2", "--all-to-all", "tapa", "--v-first", "--transport", "one_sided")
    assert np.abs(_pixels(tmp_path / "one.png") - _pixels(tmp_path / "tapa.png")).max() <= 1


@pytest.mark.timeout(400)
def test_output_dir_and_xdit_spellings(tmp_path):
    _generate("--prompt", "2", "--num_images", "3", "--num_inference_steps", "3", "--output_dir",
              str(tmp_path / "imgs"), "--nproc", "2", "--use_cfg_parallel", "--no-metadata")
    _generate("--prompt", "2", "--num-images", "3", "--steps", "3", "--output", str(tmp_path / "grid.png"))
    names = sorted(p.name for p in (tmp_path / "imgs").glob("*.png"))
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == [".swiftfusion-outputs.json", *names]
    assert names == ["000.png", "001.png", "002.png"]
    grid = _pixels(tmp_path / "grid.png")
    for i, name in enumerate(names):
        top, left = 2 + (i // 2) * 34, 2 + (i % 2) * 34
        assert np.abs(_pixels(tmp_path / "imgs" / name) - grid[top : top + 32, left : left + 32]).max() <= 1
