"""Incremental encoding of many streams at once: new audio extends each stream's encoder output,
recomputing only the frames that can still change.

Per chunk and stream: the stem turns the new audio into new frames (all final: causal convs);
then layer j recomputes its outputs from its first non-final frame to the end, reading as keys
the `behind` final rows before them (kept from earlier chunks in LevelRows) and the rows the layer
below recomputed this chunk. Nothing outside a layer's window is ever read, so the result is the
full encode's, to float rounding. Every stream's rows of a layer go through one set of matmuls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .geometry import EncoderGeometry
from .state import EncoderState, LevelRows
from .stem import StemTails, stem_forward
from .weights import EncoderWeights
from .window_attention import PackedWindows, Segment, encoder_layer

INITIAL_CAPACITY = 256  # output frames (5 s); doubled as a stream grows


@dataclass(frozen=True)
class Extension:
    """What one extend() did to a stream: output frames [changed_from, frames) are new or recomputed."""

    changed_from: int
    frames: int

    @property
    def computed(self) -> int:
        return self.frames - self.changed_from


class IncrementalEncoder:
    def __init__(self, weights: EncoderWeights, geometry: EncoderGeometry) -> None:
        if len(weights.layers) != geometry.num_layers:
            raise ValueError(f"{len(weights.layers)} layers, {geometry.num_layers} windows")
        self.w = weights
        self.geo = geometry

    def new_state(self) -> EncoderState:
        hidden = self.w.hidden
        return EncoderState(tails=StemTails.zeros(self.w, self.geo.conv_kernel),
                            levels=[LevelRows(torch.empty(0, hidden)) for _ in range(self.geo.num_layers)],
                            output=torch.empty(INITIAL_CAPACITY, hidden))

    def extend(self, states: list[EncoderState], audio: list[torch.Tensor]) -> list[Extension]:
        """Append each stream's new float audio (a multiple of samples_per_frame samples; empty: no
        change) and bring its output up to date; one batch for all streams."""
        step = self.geo.samples_per_frame
        for a in audio:
            if a.shape[0] % step:
                raise ValueError(f"{a.shape[0]} samples is not a multiple of {step}")
        busy = [i for i, a in enumerate(audio) if a.shape[0]]
        result = [Extension(s.frames, s.frames) for s in states]
        if busy:
            for i, ext in zip(busy, self._extend([states[i] for i in busy], [audio[i] for i in busy])):
                result[i] = ext
        return result

    def _extend(self, states: list[EncoderState], audio: list[torch.Tensor]) -> list[Extension]:
        old = [s.frames for s in states]
        below = stem_forward(self.w, audio, [s.tails for s in states], self.geo.frame_len, self.geo.conv_kernel)
        for s, a, rows in zip(states, audio, below):
            s.frames += rows.shape[0]
            s.samples += a.shape[0]
        below_start = old  # level 0's recomputed rows start at the old frame count
        for j, lw in enumerate(self.w.layers):
            queries = [self._queries_from(s, j) for s in states]
            segments, inputs = [], []
            for s, q0, first, rows in zip(states, queries, below_start, below):
                level = s.levels[j]
                start = max(0, q0 - self.geo.behind(j))
                assert start >= level.start and level.end == first, "kept rows do not reach the window"
                inputs += [level.rows[start - level.start:], rows]
                segments.append(Segment(start, q0, s.frames))
            win = PackedWindows.build(segments, self.geo.behind(j), self.geo.ahead(j))
            out = encoder_layer(lw, torch.cat(inputs), win, self.w.num_heads, self.w.norm_eps)
            for s, rows in zip(states, below):
                self._keep(s, j, rows)
            below, below_start = list(out.split([seg.queries for seg in segments])), queries
        return [self._write_output(s, q0, rows) for s, q0, rows in zip(states, below_start, below)]

    def _queries_from(self, s: EncoderState, layer: int) -> int:
        """The first output frame of `layer` that is not final (kept from before)."""
        return s.levels[layer + 1].end if layer + 1 < self.geo.num_layers else s.final

    def _keep(self, s: EncoderState, level: int, recomputed: torch.Tensor) -> None:
        """Append the level's rows that became final to its kept rows; keep the last few."""
        kept = s.levels[level]
        final = s.frames if level == 0 else self.geo.final(level - 1, s.frames)
        fresh = recomputed[:final - kept.end]
        rows = torch.cat([kept.rows, fresh])[-self.geo.keep(level):] if self.geo.keep(level) else kept.rows[:0]
        s.levels[level] = LevelRows(rows, final)

    def _write_output(self, s: EncoderState, q0: int, rows: torch.Tensor) -> Extension:
        s.grow(s.frames)
        s.output[q0:s.frames] = F.layer_norm(rows, (rows.shape[1],), self.w.final_norm, None, self.w.norm_eps)
        s.computed += s.frames - q0
        s.reused += q0
        s.final = self.geo.final(self.geo.num_layers - 1, s.frames)
        return Extension(q0, s.frames)

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """A whole buffer at once (a fresh state): [samples] -> [frames, hidden]."""
        s = self.new_state()
        self.extend([s], [audio[:audio.shape[0] // self.geo.samples_per_frame * self.geo.samples_per_frame]])
        return s.hidden_states.clone()
