"""Text K/V reuse across denoising steps, CFG as one doubled batch, CFG stride (see NOTE.md)."""
from .denoiser import Denoiser, DenoiserConfig

__all__ = ["Denoiser", "DenoiserConfig"]
