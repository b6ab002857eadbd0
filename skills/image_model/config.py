"""The Show-o2-style text-to-image model's shape, read from and written to a model folder's config.json."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

MODEL_TYPE = "showo2"


@dataclass(frozen=True)
class ImageModelConfig:
    # The language-model body (Qwen2.5-style: RMSNorm, grouped-query attention with q/k/v bias, RoPE, SwiGLU).
    vocab_size: int = 49152
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    # Text is cut or right-padded to a fixed length, so a request's shapes never vary; the
    # unconditional (null) text of classifier-free guidance is that many pad tokens.
    text_length: int = 64
    pad_token_id: int = 2
    # The flow head: refiner blocks over the image tokens' hidden states, AdaLN from the timestep.
    head_layers: int = 2
    head_heads: int = 4
    # Latents as Wan2.1's VAE makes them: 16 channels, 8x down; patches of 2x2 latents are tokens.
    latent_channels: int = 16
    vae_stride: int = 8
    patch_size: int = 2
    image_size: int = 128
    vae_channels: tuple[int, ...] = (64, 64, 32, 32)  # the decoder's stages, latent resolution first
    # Sampling: Euler on the linear path from noise (t = 1) to image (t = 0), times shifted.
    time_shift: float = 3.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_stride

    @property
    def image_tokens(self) -> int:
        return (self.latent_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.latent_channels * self.patch_size ** 2

    @property
    def prefix_length(self) -> int:
        """Rows whose keys and values never change during sampling: the text and the begin-image marker."""
        return self.text_length + 1

    def to_json(self) -> dict:
        return {"model_type": MODEL_TYPE, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> "ImageModelConfig":
        known = {f.name for f in fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        return cls(**values)

    @classmethod
    def load(cls, folder: Path) -> "ImageModelConfig":
        return cls.from_json(json.loads((Path(folder) / "config.json").read_text()))


def tokenizer_dir(folder: Path) -> Path:
    """Where a model folder keeps its tokenizer: a `tokenizer/` of its own (transformers' auto
    classes, reading config.json beside a tokenizer, would warn that they know no `showo2`)."""
    own = Path(folder) / "tokenizer"
    return own if own.is_dir() else Path(folder)


def is_image_model(folder: Path) -> bool:
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("model_type") == MODEL_TYPE
    except (OSError, ValueError):
        return False
