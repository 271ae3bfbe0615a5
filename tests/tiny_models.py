"""Tiny random-weight diffusers transformers of each supported family, and inputs for them.

Shapes are odd on purpose: 3 heads (not divisible by a Ulysses degree of 2 or 4) and token
counts that do not divide by 2 or 4, so padding and uneven head splits are always exercised.
Each family: ``build()`` makes the model (seeded), ``inputs(batch, seed)`` the forward kwargs.
"""

from __future__ import annotations

import torch

HEADS, HEAD_DIM, TEXT_DIM, TEXT_TOKENS = 3, 8, 16, 5
# The layouts every family runs in, against plain diffusers on one process.
LAYOUTS = {  # name: (world, options)
    "ulysses2": (2, dict(ulysses_degree=2)),
    "ring2": (2, dict(ring_degree=2)),
    "usp2x2": (4, dict(ulysses_degree=2, ring_degree=2)),
    "cfg2-ulysses2": (4, dict(cfg_degree=2, ulysses_degree=2)),
    "data2": (2, dict(data_degree=2)),
}
COG_HEAD_DIM = 16  # CogVideoX's 3-D rotary embedding splits the head into 1/4 + 3/8 + 3/8, each even


def _randn(*shape, g):
    return torch.randn(*shape, generator=g)


def flux():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS, joint_attention_dim=TEXT_DIM, pooled_projection_dim=8, axes_dims_rope=(2, 2, 4),
    )


def flux_inputs(batch, g):
    height, width = 3, 5  # 15 image tokens
    rows, cols = torch.arange(float(height)), torch.arange(float(width))
    ids = torch.stack(torch.meshgrid(torch.zeros(1), rows, cols, indexing="ij"), -1)
    return dict(
        hidden_states=_randn(batch, height * width, 8, g=g),
        encoder_hidden_states=_randn(batch, TEXT_TOKENS, TEXT_DIM, g=g),
        pooled_projections=_randn(batch, 8, g=g), timestep=torch.rand(batch, generator=g),
        img_ids=ids.reshape(-1, 3).float(), txt_ids=torch.zeros(TEXT_TOKENS, 3),
    )


def sd3():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=10, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS, joint_attention_dim=TEXT_DIM, caption_projection_dim=HEADS * HEAD_DIM,
        pooled_projection_dim=16, out_channels=4,
        pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm",  # SD3.5-style
    )


def sd3_inputs(batch, g):
    return dict(  # 5 × 5 = 25 image tokens
        hidden_states=_randn(batch, 4, 10, 10, g=g), encoder_hidden_states=_randn(batch, TEXT_TOKENS, TEXT_DIM, g=g),
        pooled_projections=_randn(batch, 16, g=g), timestep=torch.rand(batch, generator=g) * 1000,
    )


def pixart():
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=HEADS * HEAD_DIM, sample_size=10, patch_size=2, caption_channels=TEXT_DIM,
        use_additional_conditions=False,
    )


def pixart_inputs(batch, g):
    mask = torch.ones(batch, TEXT_TOKENS)
    mask[0, 3:] = 0  # a padded prompt: text key mask in cross-attention
    return dict(
        hidden_states=_randn(batch, 4, 10, 10, g=g), encoder_hidden_states=_randn(batch, TEXT_TOKENS, TEXT_DIM, g=g),
        encoder_attention_mask=mask, timestep=torch.randint(0, 1000, (batch,), generator=g),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )


def wan():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=4, out_channels=4,
        text_dim=TEXT_DIM, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
    )


def wan_inputs(batch, g):
    return dict(  # 3 frames × 3 × 3 = 27 video tokens
        hidden_states=_randn(batch, 4, 3, 6, 6, g=g), encoder_hidden_states=_randn(batch, TEXT_TOKENS, TEXT_DIM, g=g),
        timestep=torch.randint(0, 1000, (batch,), generator=g),
    )


def cogvideox():
    from diffusers import CogVideoXTransformer3DModel

    return CogVideoXTransformer3DModel(
        num_attention_heads=HEADS, attention_head_dim=COG_HEAD_DIM, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=TEXT_DIM, num_layers=2, sample_width=6, sample_height=6, sample_frames=9, patch_size=2,
        max_text_seq_length=TEXT_TOKENS, use_rotary_positional_embeddings=True,
    )


def cogvideox_inputs(batch, g):
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    frames, height, width = 3, 6, 6  # 3 × 3 × 3 = 27 video tokens
    grid = (height // 2, width // 2)
    cos, sin = get_3d_rotary_pos_embed(COG_HEAD_DIM, ((0, 0), grid), grid, frames)
    return dict(
        hidden_states=_randn(batch, frames, 4, height, width, g=g),
        encoder_hidden_states=_randn(batch, TEXT_TOKENS, TEXT_DIM, g=g),
        timestep=torch.randint(0, 1000, (batch,), generator=g), image_rotary_emb=(cos, sin),
    )


def hunyuandit(text_len: int = TEXT_TOKENS, text_len_t5: int = TEXT_TOKENS + 2):
    from diffusers import HunyuanDiT2DModel

    return HunyuanDiT2DModel(
        num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=4, patch_size=2, sample_size=10,
        hidden_size=HEADS * HEAD_DIM, num_layers=4, cross_attention_dim=TEXT_DIM, cross_attention_dim_t5=TEXT_DIM,
        pooled_projection_dim=8, text_len=text_len, text_len_t5=text_len_t5,
    )


def hunyuandit_inputs(batch, g):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    grid = (5, 5)  # 25 image tokens
    mask = torch.ones(batch, TEXT_TOKENS, dtype=torch.long)
    mask[0, 2:] = 0
    return dict(
        hidden_states=_randn(batch, 4, 10, 10, g=g), timestep=torch.randint(0, 1000, (batch,), generator=g).float(),
        encoder_hidden_states=_randn(batch, TEXT_TOKENS, TEXT_DIM, g=g), text_embedding_mask=mask,
        encoder_hidden_states_t5=_randn(batch, TEXT_TOKENS + 2, TEXT_DIM, g=g),
        text_embedding_mask_t5=torch.ones(batch, TEXT_TOKENS + 2, dtype=torch.long),
        image_meta_size=torch.tensor([[10.0, 10, 10, 10, 0, 0]] * batch), style=torch.zeros(batch, dtype=torch.long),
        image_rotary_emb=get_2d_rotary_pos_embed(HEAD_DIM, ((0, 0), grid), grid, output_type="pt"),
    )


def latte():
    from diffusers import LatteTransformer3DModel

    return LatteTransformer3DModel(
        num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=HEADS * HEAD_DIM, sample_size=10, patch_size=2, norm_type="ada_norm_single",
        caption_channels=TEXT_DIM, video_length=3,
    )


def latte_inputs(batch, g):
    return dict(  # 3 frames of 5 × 5 = 25 tokens (attention runs per frame, then per token over frames)
        hidden_states=_randn(batch, 4, 3, 10, 10, g=g), encoder_hidden_states=_randn(batch, TEXT_TOKENS, TEXT_DIM, g=g),
        timestep=torch.randint(0, 1000, (batch,), generator=g),
    )


def qwenimage():
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS, joint_attention_dim=TEXT_DIM, axes_dims_rope=(2, 2, 4),
    )


def qwenimage_inputs(batch, g):
    height, width = 3, 5  # 15 packed image tokens
    mask = torch.ones(batch, TEXT_TOKENS, dtype=torch.bool)
    mask[0, 3:] = False  # a shorter prompt: masked text keys in joint attention
    return dict(
        hidden_states=_randn(batch, height * width, 16, g=g),
        encoder_hidden_states=_randn(batch, TEXT_TOKENS, TEXT_DIM, g=g), encoder_hidden_states_mask=mask,
        timestep=torch.rand(batch, generator=g), img_shapes=[[(1, height, width)]] * batch,
    )


def hunyuanvideo():
    from diffusers import HunyuanVideoTransformer3DModel

    return HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
        text_embed_dim=TEXT_DIM, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4),
    )


def hunyuanvideo_inputs(batch, g):
    mask = torch.ones(batch, TEXT_TOKENS)
    mask[0, 3:] = 0  # a shorter prompt: masked text keys in joint attention
    return dict(  # 3 frames × 3 × 3 = 27 video tokens
        hidden_states=_randn(batch, 4, 3, 6, 6, g=g), timestep=torch.randint(0, 1000, (batch,), generator=g).float(),
        encoder_hidden_states=_randn(batch, TEXT_TOKENS, TEXT_DIM, g=g), encoder_attention_mask=mask,
        pooled_projections=_randn(batch, 8, g=g), guidance=torch.full((batch,), 6000.0),
    )


FAMILIES = {
    "flux": (flux, flux_inputs),
    "sd3": (sd3, sd3_inputs),
    "pixart": (pixart, pixart_inputs),
    "wan": (wan, wan_inputs),
    "cogvideox": (cogvideox, cogvideox_inputs),
    "hunyuandit": (hunyuandit, hunyuandit_inputs),
    "latte": (latte, latte_inputs),
    "qwenimage": (qwenimage, qwenimage_inputs),
    "hunyuanvideo": (hunyuanvideo, hunyuanvideo_inputs),
}


def save_family(name: str, folder: str) -> str:
    torch.manual_seed(0)
    model = FAMILIES[name][0]()
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def load_family(name: str, folder: str):
    model = FAMILIES[name][0]()
    return type(model).from_pretrained(folder, use_safetensors=True).eval()


def family_inputs(name: str, batch: int, seed: int = 0) -> dict:
    return FAMILIES[name][1](batch, torch.Generator().manual_seed(seed))
