"""The conv stem, incrementally and for many streams at once.

Per 80-sample frame: CMVN, asinh compression, a linear layer and SiLU (each frame alone); then two
causal convs (kernel 5, stride 2) with SiLU between (none after the second). A causal conv's output j reads input rows
2j-4 .. 2j, left-padded with zeros, so a stream only needs its last 4 rows before each conv
(`StemTails`, zeros at the start: exactly the padding) to extend its stem output by new audio.
Every stream's rows are packed into one matrix; the convs gather each output's 5 input rows and
make one matmul for all streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .weights import EncoderWeights

CMVN_EPS = 1e-6


@dataclass
class StemTails:
    """A stream's last conv inputs: what its next conv outputs read to their left."""

    embedded: torch.Tensor  # [kernel - 1, hidden]: the last frame embeddings (conv1's input)
    conv1: torch.Tensor  # [kernel - 1, 2 * hidden]: the last conv1 outputs after SiLU (conv2's input)

    @classmethod
    def zeros(cls, w: EncoderWeights, kernel: int) -> "StemTails":
        return cls(torch.zeros(kernel - 1, w.hidden), torch.zeros(kernel - 1, w.conv1_b.shape[0]))


def embed_frames(w: EncoderWeights, audio: torch.Tensor, frame_len: int) -> torch.Tensor:
    """[samples] float audio (a multiple of frame_len) -> [frames, hidden]; frames are independent."""
    x = audio.reshape(-1, frame_len)
    centered = x - x.mean(dim=-1, keepdim=True)
    x = centered / (centered.pow(2).mean(dim=-1, keepdim=True) + CMVN_EPS).sqrt()
    x = torch.asinh(w.comp_k * x)
    return F.silu(F.linear(x, w.embed))


def _causal_conv(rows: list[torch.Tensor], tails: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor,
                 kernel: int, silu: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Stride-2 causal conv of each stream's new rows, preceded by its tail; returns the outputs and
    the new tails (the last kernel-1 input rows)."""
    extended = [torch.cat([t, r]) for t, r in zip(tails, rows)]
    packed = torch.cat(extended)
    taps = torch.arange(kernel)
    index, base = [], 0
    for ext, r in zip(extended, rows):
        outs = torch.arange(r.shape[0] // 2)
        index.append(base + 2 * outs[:, None] + taps[None, :])
        base += ext.shape[0]
    windows = packed[torch.cat(index)].reshape(-1, kernel * packed.shape[1])
    out = F.linear(windows, weight, bias)
    if silu:
        out = F.silu(out)
    return list(out.split([r.shape[0] // 2 for r in rows])), [ext[-(kernel - 1):] for ext in extended]


def stem_forward(w: EncoderWeights, audio: list[torch.Tensor], tails: list[StemTails], frame_len: int,
                 kernel: int) -> list[torch.Tensor]:
    """Each stream's new stem output frames ([new samples / (4 * frame_len), hidden]) for its new
    audio (a multiple of 4 * frame_len samples); updates the tails in place."""
    counts = [a.shape[0] // frame_len for a in audio]
    embedded = list(embed_frames(w, torch.cat(audio), frame_len).split(counts))
    c1, new_embedded = _causal_conv(embedded, [t.embedded for t in tails], w.conv1_w, w.conv1_b, kernel, silu=True)
    out, new_conv1 = _causal_conv(c1, [t.conv1 for t in tails], w.conv2_w, w.conv2_b, kernel, silu=False)
    for t, e, c in zip(tails, new_embedded, new_conv1):
        t.embedded, t.conv1 = e, c
    return out
