"""The reference text-to-image server's engine: the official loop's structure (every step runs the
whole sequence of both guidance rows through the body), one request at a time."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from skills.image_model import ImageRequest, generate, load, tokenizer_dir


class PlainLoop:
    def __init__(self, model_dir: Path, threads: int | None = None):
        from transformers import AutoTokenizer

        self.model = load(model_dir, threads)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(model_dir))
        self.image_size = self.model.cfg.image_size
        self._counts = {"denoise_steps_total": 0, "body_rows_total": 0}

    def tokenize(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def counters(self) -> dict[str, float]:
        return dict(self._counts)

    def generate(self, token_ids: list[int], seed: int, steps: int, guidance: float) -> np.ndarray:
        request = ImageRequest(tuple(token_ids), seed, steps, guidance)
        rows = 2 if request.guided else 1
        cfg = self.model.cfg
        self._counts["denoise_steps_total"] += steps
        self._counts["body_rows_total"] += steps * rows * (cfg.prefix_length + 1 + cfg.image_tokens)
        return generate(self.model, request)
