"""Greedy tokens from the LM head reading half its bytes: a bf16 screen, then fp32 on the few
tokens that can still be the argmax.

A decode step of a small model on CPU is bound by memory traffic, and the LM head (32768 x 256
fp32 = 33.5 MB here) is about half of it. Greedy needs only the argmax, so: score every token in
bf16 (AMX; 16.7 MB), bound how far each bf16 score can be from the fp32 logit, keep the tokens
within twice that bound of the best score (the screen's top 16; all of them in the rare row where
the 16th is still within), and compute those few exactly in fp32. The fp32 argmax is always kept,
so the result is the plain fp32 head's (to float rounding; ties go to the lowest id, as argmax).
Measured on the tiny model's decode states: 4 candidates per row on average, 14 at most.

The bound, per row h (W: fp32 rows, Wb: their bf16 rounding, hb: h rounded):
  |W_i.h - fl(Wb_i.hb)| <= |W_i - Wb_i| |h| + |Wb_i| (|h - hb| + 2^-16 |hb| + 2^-8 |hb|)
(Cauchy-Schwarz; the fp32 accumulation of 256 products, < 256 * 2^-24 of the sum of their
absolute values; the bf16 rounding of the output, < 2^-9 of |Wb_i.hb| <= |Wb_i| |hb|), with the
row norms' maxima. No pass over the scores but one topk: elementwise passes over [vocab, rows]
cost as much as the matmul on this CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

ACCUMULATION = 2.0 ** -16  # fp32 accumulation over 256 products, relative to |Wb_i| |hb|
OUTPUT_ROUNDING = 2.0 ** -8  # a bf16 result's rounding, relative to its bound |Wb_i| |hb| (2^-9, doubled)
TOP = 16  # candidates read from the screen per row (measured: 4 on average, 14 at most); more: a full scan


@dataclass(frozen=True)
class GreedyHead:
    w: torch.Tensor  # [vocab, hidden] fp32
    screen: torch.Tensor | None  # the same in bf16; None: plain fp32 argmax
    row_error: float = 0.0  # max over rows of |W_i - Wb_i|
    row_norm: float = 0.0  # max over rows of |Wb_i|

    @classmethod
    def build(cls, w: torch.Tensor, screened: bool = True) -> "GreedyHead":
        if not screened:
            return cls(w, None)
        wb = w.bfloat16()
        return cls(w, wb, float((w - wb.float()).norm(dim=1).max()), float(wb.float().norm(dim=1).max()))

    def argmax(self, h: torch.Tensor) -> list[int]:
        """[rows, hidden] fp32 -> each row's greedy token."""
        if self.screen is None:
            return _plain_argmax(self.w, h)
        hb = h.bfloat16()
        scores = torch.mm(self.screen, hb.T)  # [vocab, rows]: the fast kernel here (see _plain_argmax)
        top, ids = scores.topk(min(TOP, scores.shape[0]), dim=0)  # one pass; [TOP, rows]
        top = top.float()
        hf = hb.float()
        norm = hf.norm(dim=1)
        bound = (self.row_error * h.norm(dim=1) + self.row_norm * ((h - hf).norm(dim=1) + ACCUMULATION * norm)
                 + OUTPUT_ROUNDING * self.row_norm * norm)
        floor = top[0] - 2 * bound  # [rows]: a token scoring below this is not the fp32 argmax
        exact = torch.einsum("krh,rh->kr", self.w[ids], h).masked_fill(top < floor, float("-inf"))
        best = exact.amax(dim=0)
        # ties go to the lowest id, as argmax: among the best, the smallest token
        tokens = torch.where(exact == best, ids, self.w.shape[0]).amin(dim=0).tolist()
        for row in torch.nonzero(top[-1] >= floor).flatten().tolist():  # more than TOP candidates: all of them
            tokens[row] = self._wide(scores[:, row].float(), h[row], float(floor[row]))
        return tokens

    def _wide(self, scores: torch.Tensor, h: torch.Tensor, floor: float) -> int:
        candidates = torch.nonzero(scores >= floor).flatten()  # ascending ids
        return int(candidates[(self.w[candidates] @ h).argmax()])


def _plain_argmax(w: torch.Tensor, h: torch.Tensor) -> list[int]:
    if h.shape[0] == 1:
        return F.linear(h, w).argmax(dim=-1).tolist()
    # MKL's sgemm with a few rows and a 32k-row weight ran 2x slower as h @ W^T than as W @ h^T
    # here (4-8 rows); the same products, another kernel.
    return torch.mm(w, h.T).argmax(dim=0).tolist()
