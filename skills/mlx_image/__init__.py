"""skills/image_model's network and sampler in MLX (see NOTE.md); runs in the mlx-lm environment."""
from .denoiser import MlxDenoiser
from .model import MlxImageModel

__all__ = ["MlxDenoiser", "MlxImageModel"]
