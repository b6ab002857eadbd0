"""A Show-o2-style text-to-image model in torch (see NOTE.md). `schedule` and `config` import no
torch, so an MLX runtime can share them; the rest is imported on first use."""
from __future__ import annotations

import importlib

from .config import MODEL_TYPE, ImageModelConfig, is_image_model, tokenizer_dir
from .schedule import seed_noise, times

_LAZY = {"ImageModel": "model", "ImageRequest": "sampling", "generate": "sampling", "load": "weights",
         "save": "weights", "seeded": "weights"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MODEL_TYPE", "ImageModelConfig", "is_image_model", "seed_noise", "tokenizer_dir", "times", *_LAZY]
