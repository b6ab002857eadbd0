"""A model folder: config.json, model.safetensors and the tokenizer; seeded random weights for the
tiny profile (no Show-o2 weights exist outside a model hub)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ImageModelConfig
from .model import ImageModel


def seeded(cfg: ImageModelConfig, seed: int) -> ImageModel:
    """Default inits from a seed, then two changes so that images are worth comparing: token
    embeddings at unit scale (the prompt steers the image clearly, not by a hair), and the VAE's
    last conv scaled so pixels spread over the range instead of sitting near mid-grey."""
    torch.manual_seed(seed)
    model = ImageModel(cfg).eval()
    with torch.no_grad():
        model.embed_tokens.weight.normal_(0.0, 1.0)
        model.begin_image.normal_(0.0, 1.0)
        z = torch.randn((2, cfg.latent_channels, cfg.latent_size, cfg.latent_size), generator=torch.Generator().manual_seed(seed))
        scale = 0.8 / float(model.vae.logits(z).std())
        model.vae.conv_out.weight.mul_(scale)
        model.vae.conv_out.bias.mul_(scale)
    return model


def save(model: ImageModel, folder: Path) -> None:
    folder = Path(folder)
    (folder / "config.json").write_text(json.dumps(model.cfg.to_json(), indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors",
              metadata={"format": "pt"})


def load(folder: Path, threads: int | None = None) -> ImageModel:
    if threads:
        torch.set_num_threads(threads)
    model = ImageModel(ImageModelConfig.load(folder)).eval()
    model.load_state_dict(load_file(Path(folder) / "model.safetensors"))
    return model

