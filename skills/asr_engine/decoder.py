"""The moonshine_streaming decoder over a block of slots: any number of new tokens per slot, each
slot at its own position, its own cross-attention context; then greedy tokens from the LM head.

One forward serves both kinds of step: a verify (a restarted decode: [start token] + the draft,
from position 0) and a decode step (the last token per slot, plus any lookup draft; shorter rows
padded, their K/V written past the slot's length and never read). Row-wise work (projections, MLP, LM
head) is one matmul for all slots; self- and cross-attention read the slots' K/V as one masked
view each (streams differ in positions and in frames).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .greedy_head import GreedyHead
from .slots import DecodeSlots
from .weights import DecoderWeights


class Decoder:
    def __init__(self, w: DecoderWeights, screened_head: bool = True) -> None:
        self.w = w
        self.head = GreedyHead.build(w.lm_head, screened_head)

    def new_slots(self, slots: int) -> DecodeSlots:
        return DecodeSlots(len(self.w.layers), slots, self.w.heads, self.w.head_dim)

    def forward(self, slots: DecodeSlots, first: int, tokens: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """tokens [n, m] for slots first..first+n-1, token 0 of slot i at position starts[i];
        writes their K/V into the slots; returns the final-norm hidden states [n, m, hidden]."""
        w, (n, m) = self.w, tokens.shape
        heads, hd = w.heads, w.head_dim
        pos = starts[:, None] + torch.arange(m)
        keys = int(pos.max()) + 1
        slots.reserve(keys)
        allowed = (torch.arange(keys)[None, None, :] <= pos[:, :, None])[:, None]  # [n, 1, m, keys]
        slot = torch.arange(first, first + n)[:, None]
        frames = max(slots.frames[first:first + n])
        cross_mask = slots.cross_mask(first, n)
        x = w.embed[tokens]
        for i, lw in enumerate(w.layers):
            h = F.layer_norm(x, x.shape[-1:], lw.self_norm, None, w.norm_eps)
            q, k, v = F.linear(h, lw.w_qkv).view(n, m, 3, heads, hd).unbind(2)
            q, k = w.rotary.apply(q, pos), w.rotary.apply(k, pos)
            slots.k[i][slot, :, pos] = k
            slots.v[i][slot, :, pos] = v
            a = F.scaled_dot_product_attention(q.transpose(1, 2), slots.k[i, first:first + n, :, :keys],
                                               slots.v[i, first:first + n, :, :keys], attn_mask=allowed)
            x = x + F.linear(a.transpose(1, 2).reshape(n, m, -1), lw.w_o)
            h = F.layer_norm(x, x.shape[-1:], lw.cross_norm, None, w.norm_eps)
            cq = F.linear(h, lw.cross_q).view(n, m, heads, hd).transpose(1, 2)
            a = F.scaled_dot_product_attention(cq, slots.cross[i, 0, first:first + n, :, :frames],
                                               slots.cross[i, 1, first:first + n, :, :frames], attn_mask=cross_mask)
            x = x + F.linear(a.transpose(1, 2).reshape(n, m, -1), lw.cross_o)
            h = F.layer_norm(x, x.shape[-1:], lw.mlp_norm, None, w.norm_eps)
            up, gate = F.linear(h, lw.fc1_w, lw.fc1_b).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, lw.fc2_w, lw.fc2_b)
        return F.layer_norm(x, x.shape[-1:], w.norm, None, w.norm_eps)

    def greedy(self, hidden: torch.Tensor) -> list[int]:
        """[rows, hidden] -> each row's argmax token."""
        return self.head.argmax(hidden)
