"""Tiny random-weight diffusers pipelines, built offline: tokenizers made with the ``tokenizers``
package (a word-level vocabulary), text encoders and VAEs from small configs, saved with
``save_pretrained`` and loaded back by the real loading code."""

from __future__ import annotations

import torch

WORDS = "a an the of in on with cat dog red blue green photo painting sunset city tree big small".split()


def word_tokenizer(max_length: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{word: i + 3 for i, word in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                                   model_max_length=max_length)


def clip_text_encoder(hidden: int, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(WORDS) + 3, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                            projection_dim=hidden, pad_token_id=0, eos_token_id=2, bos_token_id=1)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def t5_text_encoder(d_model: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(WORDS) + 3, d_model=d_model, d_kv=4, d_ff=2 * d_model, num_layers=1,
                      num_heads=2, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=2)
    return T5EncoderModel(config)


def vae(latent_channels: int, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
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


PIPELINES = {"flux": flux_pipeline}
# What each call runs: a 20×20 image is 10×10 latents, 25 packed tokens (odd on purpose).
CALLS = {"flux": dict(height=20, width=20, max_sequence_length=7, guidance_scale=3.5)}


def save_pipeline(name: str, folder: str) -> str:
    torch.manual_seed(0)
    PIPELINES[name]().save_pretrained(folder, safe_serialization=True)
    return folder
