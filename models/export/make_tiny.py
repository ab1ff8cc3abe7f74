"""Regenerate models/tiny deterministically: real architectures at tiny sizes, seeded random
weights, exported and checked by the same code path as a real SD export.

    python -m models.export.make_tiny [--out models/tiny]

Architectures (all from diffusers / transformers, random weights, seeds below):
- tokenizer: CLIP BPE cut to its first 1534 merges (vocabulary 2048: ids < 2046 are CLIP's own
  ids; <|startoftext|> = 2046, <|endoftext|> = 2047 = padding), sequence length 77;
- text_encoder: CLIPTextModel, vocab 2048, hidden 32, 2 layers, 2 heads, 77 positions;
- VAE: AutoencoderKL with 4 blocks (8, 16, 16, 16 channels) -> downsampling 8, 4 latent channels;
- UNet: UNet2DConditionModel (16, 32 channels; CrossAttnDown + Down / Up + CrossAttnUp; one
  downsampler: latent h, w multiples of 2), cross-attention dim 32, inflated to video
  (sparse-causal attn1 + temporal attention), temporal layers given seeded random weights so
  that frames really interact (standing in for a tuned checkpoint);
- context adapter: ctxd's cross-attention adapter (model dim 16, 2 heads), inputs latent,
  text_states, timestep;
- CLIP pair: CLIPModel (text: as above; vision: 32 px images, 8 px patches, hidden 32, 2 layers),
  projection dim 16.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from .adapter import AdapterConfig, ContextAdapter
from .clip_tokenizer import special_ids
from .export import CLIP_MEAN, CLIP_STD, SD_SCHEDULE, Components, export_bundle
from .inflate import InflatedUNet, randomize_temporal

NUM_MERGES = 1534            # vocabulary 512 + 1534 + 2 = 2048
SEQ_LEN = 77
HIDDEN = 32


def tiny_text_config(**over):
    from transformers import CLIPTextConfig

    bos, eos, vocab = special_ids(NUM_MERGES)
    cfg = dict(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=2, max_position_embeddings=SEQ_LEN, projection_dim=16,
               bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    cfg.update(over)
    c = CLIPTextConfig(**cfg)
    c._attn_implementation = "eager"
    return c


def tiny_text_model(seed=1):
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(tiny_text_config()).eval()


def tiny_vae(seed=2):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), sample_size=64, scaling_factor=0.18215).eval()


def tiny_unet2d(seed=3):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=HIDDEN,
        attention_head_dim=8, norm_num_groups=8).eval()


def tiny_unet(seed=3, temporal_seed: int | None = 4, temporal_conv=False):
    unet = InflatedUNet(tiny_unet2d(seed), temporal_conv=temporal_conv).eval()
    if temporal_seed is not None:
        randomize_temporal(unet, temporal_seed)
    return unet


def tiny_clip(seed=5):
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
    text = tiny_text_config()
    cfg = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    cfg._attn_implementation = "eager"
    model = CLIPModel(cfg).eval()
    model.config._attn_implementation = "eager"
    return model


def tiny_adapter(seed=6, image_dim=None):
    torch.manual_seed(seed)
    cfg = AdapterConfig(latent_channels=4, text_dim=HIDDEN, model_dim=16, heads=2,
                        image_dim=image_dim, use_timestep=True, ff_mult=2)
    return ContextAdapter(cfg).eval()


def tiny_components(with_clip=True, with_adapter=True, temporal_conv=False) -> Components:
    return Components(
        name="tiny",
        description=("Tiny random-weight bundle (real architectures: CLIP text tower, AutoencoderKL, "
                     "inflated video UNet, context adapter, CLIP pair) for shapes, names and plumbing"),
        text_model=tiny_text_model(), vae=tiny_vae(), unet=tiny_unet(temporal_conv=temporal_conv),
        sequence_length=SEQ_LEN, num_merges=NUM_MERGES, schedule=dict(SD_SCHEDULE),
        context={"k_schedule": "scaled_sqrt_one_minus_abar", "scale": 0.018125, "convention": "U"},
        scale_factor=0.18215,
        clip_model=tiny_clip() if with_clip else None, clip_image_mean=CLIP_MEAN, clip_image_std=CLIP_STD,
        adapter=tiny_adapter() if with_adapter else None,
        notes=[
            "Random weights (seeded; `python -m models.export.make_tiny` regenerates byte-identical files "
            "on the same library versions). Outputs are meaningless; shapes, names and dtypes are real.",
            "Tokenizer: vocabulary-reduced CLIP BPE (first 1534 merges, 2048 ids). Ids below 2046 are the "
            "full CLIP vocabulary's ids for the same tokens; <|startoftext|> = 2046, <|endoftext|> = 2047 "
            "(also padding). Chosen over the full 49408-token vocabulary so that both text towers stay "
            "small (a 49408 x 32 fp32 embedding is 6.3 MB). Words outside the 2048 ids split into "
            "smaller pieces, so the ids differ from SD's for rarer words.",
            "UNet temporal attention has seeded random weights (not the zero initialisation of a fresh "
            "inflation), so frames of a window really interact: frame i's output depends on all F frames "
            "(temporal attention), while spatial attention is sparse-causal (frames 0 and i-1).",
            "The UNet's latent h and w must be multiples of 2 (one downsampler); the VAE's downsampling is 8.",
            "Context adapter: random weights, inputs latent [B,4,F,h,w], text_states [B,77,32], timestep [B].",
            "CLIP pair: image_size 32, projection dim 16; clip_text uses the same tokenizer.json (77 tokens).",
        ])


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(prog="python -m models.export.make_tiny", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(here), "tiny"))
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    export_bundle(tiny_components(), args.out, command="python -m models.export.make_tiny",
                  readme_extra=_EXTRA)
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"tiny bundle written to {args.out} ({total / 1e6:.2f} MB)")
    return 0


_EXTRA = """
## Regenerate and test

    python -m models.export.make_tiny          # from the repository root, in the export venv
    python -m pytest models/export/tests -q
"""

if __name__ == "__main__":
    sys.exit(main())
