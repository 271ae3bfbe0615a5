"""Each supported diffusers transformer family, parallelized by its plan, against the same model
(loaded back with ``from_pretrained``) run by plain diffusers in one process. Odd shapes: 3 heads,
token counts that do not divide by the sequence-parallel degree."""

import pytest
import torch
from reference import max_rel_err
from tiny_models import FAMILIES, LAYOUTS, family_inputs, load_family, save_family

from swiftfusion import ParallelConfig, parallelize


@pytest.fixture(scope="session")
def family_folders(tmp_path_factory):
    return {name: save_family(name, str(tmp_path_factory.mktemp(name))) for name in FAMILIES}


def family_case(name, folder, options, batch=2):
    model = load_family(name, folder)
    inputs = family_inputs(name, batch, seed=3)
    with torch.no_grad():
        expected = model(**inputs).sample
        parallelize(model, ParallelConfig(collective_timeout_s=30, **options))
        actual = model(**inputs).sample
        again = model(**inputs).sample  # the hooks hold up across calls
    return max_rel_err(actual, expected), max_rel_err(again, expected)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_single_process(worlds, family_folders, family, layout):
    world, options = LAYOUTS[layout]
    for first, second in worlds.get(world).run(family_case, family, family_folders[family], options):
        assert first <= 1e-4 and second <= 1e-4, (first, second)


def v_first_case(name, folder, options):
    from swiftfusion import comm

    model = load_family(name, folder)
    inputs = family_inputs(name, 2, seed=4)
    with torch.no_grad():
        expected = model(**inputs).sample
        parallelize(model, ParallelConfig(collective_timeout_s=30, v_first=True, **options))
        with comm.events.capture() as log:
            actual = model(**inputs).sample
    names = [name for name, _ in log if name.startswith("v_first")]
    return max_rel_err(actual, expected), names


@pytest.mark.parametrize("family", ["flux", "sd3", "wan", "cogvideox", "qwenimage", "hunyuanvideo"])
def test_v_first_inside_diffusers_processors(worlds, family_folders, family):
    # V's all-to-all starts when Q or K is projected (not in a fallback at attention): every
    # attention call starts V there before Q/K are ready (joint attention: text V and image V).
    for error, names in worlds.get(4).run(v_first_case, family, family_folders[family],
                                          dict(ulysses_degree=2, ring_degree=2)):
        assert error <= 1e-4, error
        assert names and names[-1] == "v_first.qk_ready"
        calls = " ".join(names).split("v_first.qk_ready")[:-1]
        assert all("v_first.v_started_at_projection" in call for call in calls), names
