"""Tiny random-weight diffusers pipelines, built offline: tokenizers made with the ``tokenizers``
package (a word-level vocabulary), text encoders and VAEs from small configs, saved with
``save_pretrained`` and loaded back by the real loading code."""

from __future__ import annotations

import torch
from tiny_models import TEXT_TOKENS

WORDS = "a an the of in on with cat dog red blue green photo painting sunset city tree big small".split()


def word_tokenizer(max_length: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{word: i + 3 for i, word in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                                   model_max_length=max_length)


def clip_text_encoder(hidden: int, with_projection: bool = False, positions: int = 16):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(WORDS) + 3, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=positions,
                            projection_dim=hidden, pad_token_id=0, eos_token_id=2, bos_token_id=1)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def t5_text_encoder(d_model: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(WORDS) + 3, d_model=d_model, d_kv=4, d_ff=2 * d_model, num_layers=1,
                      num_heads=2, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=2)
    return T5EncoderModel(config)


def vae(latent_channels: int, blocks: int = 2, **extra):
    """An image VAE compressing 2 ** (blocks - 1) times per side."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=(8,) * blocks,
                         layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=16, **extra)


def flux_pipeline():
    """FluxPipeline: CLIP + T5 text encoders, a 2-channel VAE (latents packed 2×2 into 8 channels)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from tiny_models import flux

    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae(2, shift_factor=0.1, scaling_factor=1.5),
        text_encoder=clip_text_encoder(8), tokenizer=word_tokenizer(8),
        text_encoder_2=t5_text_encoder(16), tokenizer_2=word_tokenizer(16), transformer=flux(),
    )


def sd3_pipeline():
    """StableDiffusion3Pipeline: two CLIP encoders with projection (8 + 8 pooled) and T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from tiny_models import sd3

    return StableDiffusion3Pipeline(
        transformer=sd3(), scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae(4, shift_factor=0.1, scaling_factor=1.5),
        text_encoder=clip_text_encoder(8, with_projection=True), tokenizer=word_tokenizer(8),
        text_encoder_2=clip_text_encoder(8, with_projection=True), tokenizer_2=word_tokenizer(8),
        text_encoder_3=t5_text_encoder(16), tokenizer_3=word_tokenizer(16),
    )


def pixart_pipeline(alpha: bool = False):
    """PixArt-Σ (or -α: the same transformer class, another pipeline)."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline
    from tiny_models import pixart

    kind = PixArtAlphaPipeline if alpha else PixArtSigmaPipeline
    # PixArt wants sizes divisible by 8: a 4× VAE makes 40×40 pixels 10×10 latents, 25 patches.
    return kind(tokenizer=word_tokenizer(16), text_encoder=t5_text_encoder(16), vae=vae(4, blocks=3),
                transformer=pixart(), scheduler=DPMSolverMultistepScheduler())


def latte_pipeline():
    from diffusers import DDIMScheduler, LattePipeline
    from tiny_models import latte

    return LattePipeline(tokenizer=word_tokenizer(16), text_encoder=t5_text_encoder(16), vae=vae(4, blocks=3),
                         transformer=latte(), scheduler=DDIMScheduler())


def wan_pipeline():
    """WanPipeline: UMT5 text encoder, a tiny Wan VAE (8× spatial, 4× temporal compression)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
    from tiny_models import wan
    from transformers import UMT5Config, UMT5EncoderModel

    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(WORDS) + 3, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                               num_heads=2, relative_attention_num_buckets=8, pad_token_id=0))
    video_vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                 temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    return WanPipeline(tokenizer=word_tokenizer(16), text_encoder=text_encoder, vae=video_vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=wan())


def wan22_pipeline():
    """Wan 2.2 style: two experts (high noise, then low noise below the boundary)."""
    from diffusers import WanPipeline
    from tiny_models import wan

    first = wan_pipeline()
    torch.manual_seed(1)
    return WanPipeline(tokenizer=first.tokenizer, text_encoder=first.text_encoder, vae=first.vae,
                       scheduler=first.scheduler, transformer=first.transformer, transformer_2=wan(),
                       boundary_ratio=0.5)


def cogvideox_pipeline():
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline
    from tiny_models import cogvideox

    video_vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    )
    return CogVideoXPipeline(tokenizer=word_tokenizer(16), text_encoder=t5_text_encoder(16), vae=video_vae,
                             transformer=cogvideox(), scheduler=CogVideoXDDIMScheduler())


def hunyuandit_pipeline():
    """HunyuanDiTPipeline: BERT and T5 encoders (the pipeline pads them to 77 and 256 tokens), an 8× VAE."""
    from diffusers import DDPMScheduler, HunyuanDiTPipeline
    from tiny_models import hunyuandit
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=len(WORDS) + 3, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=128, pad_token_id=0))
    return HunyuanDiTPipeline(
        vae=vae(4, blocks=4), text_encoder=bert, tokenizer=word_tokenizer(77),
        transformer=hunyuandit(text_len=77, text_len_t5=256), scheduler=DDPMScheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False, text_encoder_2=t5_text_encoder(16),
        tokenizer_2=word_tokenizer(256),
    )


def qwenimage_pipeline():
    """QwenImagePipeline: a one-layer Qwen2.5-VL as text encoder (prompts padded to the longest, so
    text key masks reach joint attention), a 4× Qwen-Image VAE (latents packed 2×2)."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline
    from tiny_models import qwenimage
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vocab = len(WORDS) + 3
    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=vocab, max_position_embeddings=256, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0,
                         rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16),
        vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    image_vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                       temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    return QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=image_vae,
                             text_encoder=Qwen2_5_VLForConditionalGeneration(config), tokenizer=word_tokenizer(1024),
                             transformer=qwenimage())


def hunyuanvideo_pipeline():
    """HunyuanVideoPipeline: a two-layer Llama (its prompt template is cropped; padded prompts give
    text key masks in joint attention) and CLIP, a tiny Hunyuan video VAE (8× spatial, 4× temporal)."""
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
    from tiny_models import hunyuanvideo
    from transformers import LlamaConfig, LlamaModel

    llama = LlamaModel(LlamaConfig(vocab_size=len(WORDS) + 3, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    video_vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4,
    )
    return HunyuanVideoPipeline(
        text_encoder=llama, tokenizer=word_tokenizer(256), transformer=hunyuanvideo(), vae=video_vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip_text_encoder(8, positions=80),
        tokenizer_2=word_tokenizer(77),
    )


PIPELINES = {
    "flux": flux_pipeline, "sd3": sd3_pipeline, "pixart": pixart_pipeline,
    "pixart-alpha": lambda: pixart_pipeline(alpha=True), "latte": latte_pipeline, "wan": wan_pipeline,
    "wan22": wan22_pipeline, "cogvideox": cogvideox_pipeline, "hunyuandit": hunyuandit_pipeline,
    "qwenimage": qwenimage_pipeline, "hunyuanvideo": hunyuanvideo_pipeline,
}
# What each call runs (odd token counts on purpose): a 20×20 image is 10×10 latents (Flux: 25
# packed tokens; SD3: 25 patches); PixArt and Latte want sizes divisible by 8: 40×40 pixels with a
# 4× VAE (HunyuanDiT: 80×80 with an 8× VAE); videos of 9 frames at 48×48 are 3×6×6 latents, 27 tokens (Wan, CogVideoX).
# ``PER_PROMPT``: the pipeline's name for outputs per prompt, where it is not num_images_per_prompt.
CALLS = {
    "flux": dict(height=20, width=20, max_sequence_length=7, guidance_scale=3.5, true_cfg_scale=2.0,
                 negative_prompt=["a small dog", "a green cat"]),
    "sd3": dict(height=20, width=20, max_sequence_length=7, guidance_scale=5.0),
    "pixart": dict(height=40, width=40, max_sequence_length=7, guidance_scale=4.5, use_resolution_binning=False,
                   clean_caption=False),
    "pixart-alpha": dict(height=40, width=40, max_sequence_length=7, guidance_scale=4.5, use_resolution_binning=False,
                         clean_caption=False),
    "latte": dict(height=40, width=40, video_length=3, guidance_scale=7.5, clean_caption=False),
    "wan": dict(height=48, width=48, num_frames=9, max_sequence_length=7, guidance_scale=5.0),
    "wan22": dict(height=48, width=48, num_frames=9, max_sequence_length=7, guidance_scale=5.0,
                  guidance_scale_2=3.0),
    "cogvideox": dict(height=48, width=48, num_frames=9, max_sequence_length=TEXT_TOKENS, guidance_scale=6.0),
    "hunyuandit": dict(height=80, width=80, guidance_scale=5.0, use_resolution_binning=False),
    "qwenimage": dict(height=24, width=40, true_cfg_scale=4.0, negative_prompt=[" ", "a dog"]),  # 3 × 5 tokens
    "hunyuanvideo": dict(height=48, width=48, num_frames=9, max_sequence_length=7, guidance_scale=6.0,
                         true_cfg_scale=2.0, negative_prompt=["a small dog", "a green cat"]),
}
PER_PROMPT = {name: "num_videos_per_prompt" for name in ("wan", "wan22", "cogvideox", "hunyuanvideo")}


def save_pipeline(name: str, folder: str) -> str:
    torch.manual_seed(0)
    PIPELINES[name]().save_pretrained(folder, safe_serialization=True)
    return folder
