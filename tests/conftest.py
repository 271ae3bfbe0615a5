import pytest
import torch
from harness import WorldPool


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
