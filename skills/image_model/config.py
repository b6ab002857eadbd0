"""The Show-o2-style text-to-image model's shape, read from and written to a model folder's config.json."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

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

    @property
    def sequence_length(self) -> int:
        return self.prefix_length + 1 + self.image_tokens

    # The sequence's layout, in numpy so that the torch model and the MLX port share one definition.
    def text_ids(self, token_ids: list[int]) -> list[int]:
        """A prompt's ids cut or right-padded to the fixed text length."""
        ids = list(token_ids)[: self.text_length]
        return ids + [self.pad_token_id] * (self.text_length - len(ids))

    def null_ids(self) -> list[int]:
        """The unconditional row of classifier-free guidance: every text token replaced by pad."""
        return [self.pad_token_id] * self.text_length

    def omni_mask(self) -> np.ndarray:
        """(n, n) bool, True where a row may look: the prefix causal and blind to what follows it,
        the time and image rows seeing everything."""
        p, n = self.prefix_length, self.sequence_length
        mask = np.ones((n, n), dtype=bool)
        mask[:p] = np.tril(np.ones((p, n), dtype=bool))
        return mask

    def rope_angles(self) -> np.ndarray:
        """(n, head_dim) float64 rotary angles of every position, both halves."""
        inv = 1.0 / self.rope_theta ** (np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim)
        angles = np.outer(np.arange(self.sequence_length, dtype=np.float64), inv)
        return np.concatenate([angles, angles], axis=-1)

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
