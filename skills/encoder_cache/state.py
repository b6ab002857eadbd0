"""A stream's incremental encoder state: what the next chunk's recompute reads, and the output."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .stem import StemTails


@dataclass
class LevelRows:
    """The last final rows of one level (the stem's output, or a layer's): the keys the next layer's
    recomputed queries read. Rows are frames [end - len(rows), end); `end` counts the level's final frames."""

    rows: torch.Tensor
    end: int = 0

    @property
    def start(self) -> int:
        return self.end - self.rows.shape[0]


@dataclass
class EncoderState:
    tails: StemTails
    levels: list[LevelRows]  # level j: the input of layer j (0: the stem's output)
    output: torch.Tensor  # [capacity, hidden]: encoder output frames; [:frames] valid
    frames: int = 0  # encoder frames so far (stem frames: every one is final)
    final: int = 0  # output frames that no later audio changes
    computed: int = 0  # output frames computed, over the stream's life
    reused: int = 0  # output frames kept from an earlier chunk instead of computed again, summed per chunk
    samples: int = 0  # audio samples encoded

    @property
    def hidden_states(self) -> torch.Tensor:
        return self.output[:self.frames]

    def grow(self, frames: int) -> None:
        if frames > self.output.shape[0]:
            bigger = torch.empty(max(frames, 2 * self.output.shape[0]), self.output.shape[1])
            bigger[:self.output.shape[0]] = self.output
            self.output = bigger
