"""Which encoder frames a sliding-window streaming encoder can still change, from its windows.

A layer with window (left, right) lets output frame t attend to input frames t-left+1 .. t+right-1
(transformers' sliding_window_mask_function: 0 <= q - k < left, or 0 < k - q < right). So a layer
looks `right - 1` frames ahead and `left - 1` behind. Output frame t of layer k is final once its
input frames up to t + ahead_k exist and are final themselves: with T frames so far, layer k has
`T - (ahead_1 + ... + ahead_k)` final frames. The conv stem is causal, so its frames are final as
soon as they exist.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncoderGeometry:
    windows: tuple[tuple[int, int], ...]  # per layer (left, right), as the transformers config says
    frame_len: int = 80  # samples per stem input frame (5 ms)
    stem_stride: int = 4  # stem input frames per encoder frame (two stride-2 convs)
    conv_kernel: int = 5

    @property
    def samples_per_frame(self) -> int:
        return self.frame_len * self.stem_stride

    @property
    def num_layers(self) -> int:
        return len(self.windows)

    def behind(self, layer: int) -> int:
        return self.windows[layer][0] - 1

    def ahead(self, layer: int) -> int:
        return max(self.windows[layer][1] - 1, 0)

    @property
    def lookahead(self) -> int:
        """Encoder output frames at the end of the buffer that new audio can still change."""
        return sum(self.ahead(k) for k in range(self.num_layers))

    @property
    def receptive_left(self) -> int:
        """Stem frames behind an output frame that it depends on (the stack of windows)."""
        return sum(self.behind(k) for k in range(self.num_layers))

    def final(self, layer: int, frames: int) -> int:
        """Final output frames of `layer` (0-based) when the stem has produced `frames`."""
        return max(0, frames - sum(self.ahead(k) for k in range(layer + 1)))

    def keep(self, level: int) -> int:
        """Final rows of `level` (0: the stem, k: layer k's output) that the next layer may still read
        as keys when it recomputes its unstable frames."""
        return self.behind(level) + self.ahead(level) if level < self.num_layers else 0

    @classmethod
    def from_hf(cls, encoder_config) -> "EncoderGeometry":
        frame_len = int(round(encoder_config.sample_rate * encoder_config.frame_ms / 1000.0))
        return cls(windows=tuple((int(a), int(b)) for a, b in encoder_config.sliding_windows), frame_len=frame_len)
