import pytest
import torch
from harness import WorldPool
from tiny_pipelines import save_pipeline


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if a model load or a launch is attempted (for tests of input checks)."""
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr("swiftfusion.pipelines.diffusers_pipelines.load", forbidden)
    monkeypatch.setattr("swiftfusion.pipelines.load_pipeline", forbidden)
    monkeypatch.setattr("swiftfusion.cli.launch", forbidden)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.fixture(scope="session")
def worlds():
    pool = WorldPool()
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def tiny_dit_folder(tmp_path_factory):
    """A random-weight DiT saved with save_pretrained: 3 heads, 5×5 = 25 tokens (odd on purpose)."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    model = DiTTransformer2DModel(
        num_attention_heads=3, attention_head_dim=8, in_channels=2, out_channels=2, num_layers=2,
        sample_size=10, patch_size=2, num_embeds_ada_norm=5, norm_type="ada_norm_zero",
    )
    folder = tmp_path_factory.mktemp("tiny-dit")
    model.save_pretrained(folder, safe_serialization=True)
    return str(folder)


class PipelineFolders(dict):
    """Tiny diffusers pipeline name -> the folder it was saved to; each built on first use."""

    def __init__(self, tmp_path_factory) -> None:
        super().__init__()
        self.tmp_path_factory = tmp_path_factory

    def __missing__(self, name: str) -> str:
        self[name] = save_pipeline(name, str(self.tmp_path_factory.mktemp(f"{name}-pipeline")))
        return self[name]


@pytest.fixture(scope="session")
def pipeline_folders(tmp_path_factory):
    """The tiny pipelines of ``tiny_pipelines.PIPELINES`` saved with save_pretrained, by name."""
    return PipelineFolders(tmp_path_factory)
