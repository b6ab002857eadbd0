"""One encoder layer over the packed rows of many streams, queries only where frames can change.

Each stream contributes a segment of the layer's input frames [start, end): the frames whose
outputs are recomputed ([query_start, end)) and, before them, the `behind` frames their window
reads as keys. Queries go in blocks; a block reads the span of keys its windows cover, masked to
each query's window and to the segment, so attention costs about (block + window) x queries, not
frames^2, and no stream sees another's rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .weights import EncoderLayerWeights


@dataclass(frozen=True)
class Segment:
    start: int  # first input frame in the packed rows (keys only until query_start)
    query_start: int
    end: int  # the stream's frames so far

    @property
    def rows(self) -> int:
        return self.end - self.start

    @property
    def queries(self) -> int:
        return self.end - self.query_start


@dataclass(frozen=True)
class PackedWindows:
    """Banded attention in blocks: each block of up to `block` consecutive queries of one segment
    reads one span of keys (its windows' union, `block + behind + ahead` rows), so keys are
    gathered about once per query instead of once per (query, window position)."""

    query_rows: torch.Tensor  # [Q]: each query's row in the packed input, segment by segment
    block_queries: torch.Tensor  # [blocks, block]: rows of the block's queries (padding: row 0)
    block_keys: torch.Tensor  # [blocks, span]: rows of the block's keys (padding: row 0)
    mask: torch.Tensor  # [blocks, 1, block, span]: query i may read key j
    placed: torch.Tensor  # [Q]: each query's position in the flattened [blocks * block]

    @classmethod
    def build(cls, segments: list[Segment], behind: int, ahead: int, block: int = 32) -> "PackedWindows":
        span = block + behind + ahead
        rows, bq, bk, masks, placed, base = [], [], [], [], [], 0
        for seg in segments:
            for b0 in range(seg.query_start, seg.end, block):
                queries = torch.arange(b0, b0 + block)  # frames
                keys = torch.arange(b0 - behind, b0 - behind + span)
                q_ok = queries < seg.end
                k_ok = (keys >= seg.start) & (keys < seg.end)
                offset = keys[None, :] - queries[:, None]
                allowed = (offset >= -behind) & (offset <= ahead) & k_ok[None, :] & q_ok[:, None]
                allowed[~q_ok, behind] = True  # padding queries read something: no all-masked rows
                rows.append(base + queries[q_ok] - seg.start)
                placed.append(len(bq) * block + torch.arange(int(q_ok.sum())))
                bq.append(torch.where(q_ok, base + queries - seg.start, 0))
                bk.append(torch.where(k_ok, base + keys - seg.start, 0))
                masks.append(allowed)
            base += seg.rows
        return cls(torch.cat(rows), torch.stack(bq), torch.stack(bk), torch.stack(masks)[:, None], torch.cat(placed))


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, win: PackedWindows) -> torch.Tensor:
    """q [rows, heads, dim] (every packed row; only the blocks' are read), k and v [rows, heads,
    dim] -> [Q, heads, dim] in query order."""
    qb = q[win.block_queries].transpose(1, 2)  # [blocks, heads, block, dim]
    kb, vb = k[win.block_keys].transpose(1, 2), v[win.block_keys].transpose(1, 2)
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=win.mask)
    return out.transpose(1, 2).flatten(0, 1)[win.placed]


def encoder_layer(w: EncoderLayerWeights, x: torch.Tensor, win: PackedWindows, heads: int, eps: float) -> torch.Tensor:
    """Pre-norm attention + GELU MLP; x [rows, hidden] -> [Q, hidden] for the query rows."""
    n, hidden = x.shape
    h = F.layer_norm(x, (hidden,), w.attn_norm, None, eps)
    k, v = F.linear(h, w.w_kv).view(n, 2, heads, -1).unbind(1)
    q = torch.zeros(n, heads, k.shape[-1])
    q[win.query_rows] = F.linear(h[win.query_rows], w.w_q).view(len(win.query_rows), heads, -1)
    y = x[win.query_rows] + F.linear(window_attention(q, k, v, win).flatten(1), w.w_o)
    m = F.layer_norm(y, (hidden,), w.mlp_norm, None, eps)
    return y + F.linear(F.gelu(F.linear(m, w.fc1_w, w.fc1_b)), w.fc2_w, w.fc2_b)
