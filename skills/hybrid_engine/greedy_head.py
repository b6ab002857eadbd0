"""The greedy token of the fp32 logits, reading the lm_head in bf16 or int8: for rows that ask for no logprobs.

At a decode step of a few rows the tied 49152 x 256 lm_head is the largest read (50 MB in fp32,
1.6 of a 4.3 ms step). kernels.cpp `greedy_ids` screens every token with a bf16 copy of it (half
the bytes, AVX-512 BF16 dot products, fp32 sums); each screened logit y^_v is within a bound B of
the logit y_v that `linear` computes; every maximal token then has y^_v >= max_u y^_u - 2 B, so only
the tokens meeting that are computed again, by `linear`'s own multiply-add chain on their columns
of the panels (fp32, or bf16 where the weights are bf16 values), and the first of the largest wins,
as `argmax` picks it. The result is the fp32 head's argmax, bit for bit, whatever the weights.

The bound: x and w rounded to bf16 (2^-9 each, relative), the screen's fp32 sums and `linear`'s
(K 2^-24 each, relative to sum_k |x_k||w_vk|): |y_v - y^_v| <= (2^-8 + 2^-18 + 2 K 2^-24)
sum_k |x_k||w_vk| <= ERROR |x|_2 max_v |w_v|_2 for K <= MAX_K (Cauchy-Schwarz), plus an absolute
allowance for the products the BF16 instruction flushes to zero below 2^-126.
skills/asr_engine/greedy_head.py does the same for setting D in torch (one topk over a bf16
mm, an einsum recheck: the fp32 argmax to float rounding). Here the recheck must be `linear`'s own
chain, bit for bit, and the same scheme as torch ops took 1.32 ms against the fp32 head's 1.1-1.2
(each pass over [rows, vocab] costs about what the matmul does), so it is one C++ pass instead.
`tests/skills/test_hybrid_engine.py` checks it against the fp32 head on near-ties made on purpose,
and that a screen with no bound picks other tokens there (the check can fail).

`Int8Head` is the same scheme on a screen in int8 (kernels.cpp `greedy_ids_i8`, AVX-512 VNNI: 64
int8 products an instruction, exact int32 sums, a quarter of the fp32 head's bytes). Its bound is per
token, from the roundings' actual errors (see the class), so it holds whatever the weights. Where
the weights are bf16 values the fp32 head is read in bf16 already, and the bf16 screen then reads
as many bytes as `linear` does: on the tiny model (Intel Xeon, 8 rows, 2 threads) the int8 screen
took 0.73 ms, the bf16 one 1.47, the fp32 head and its argmax 1.65.
"""

from __future__ import annotations

import torch

MAX_K = 1024  # 2^-8 + 2^-18 + 2 * 1024 * 2^-24 = 0.004032
ERROR = 0.0042  # that, with 4% to spare for the rounding of the norms and of the bound itself


class GreedyHead:
    """The bf16 screen (above). `Int8Head` is the same head with an int8 screen."""

    screen_kind = "bf16"

    def __init__(self, panels: torch.Tensor, vocab: int, kernels, error: float = ERROR) -> None:
        # W [vocab, K], the same floats (from fp32 panels, or bf16 ones holding bf16 values)
        weight = head_weight(panels, vocab)
        self.k = kernels
        self.panels = panels
        self.vocab = vocab
        self.error = error
        self.screen = kernels.pack_screen(weight.contiguous())
        self.max_norm = float(weight.double().norm(dim=1).max()) * (1 + 1e-6)

    @staticmethod
    def build(head, kernels, screen: str = "int8") -> GreedyHead | Int8Head | None:
        """For the model's lm_head (linear.Linear): the int8 screen where asked for and this build has
        AVX-512 VNNI, else the bf16 one where it has AVX-512 BF16; None where neither can be exact
        here (not the C++ panels, or K past MAX_K)."""
        if head.kind != "native" or head.in_features > MAX_K:
            return None
        if screen == "int8" and getattr(kernels, "int8_screen_available", lambda: False)():
            return Int8Head(head.packed, head.out_features, kernels)
        if getattr(kernels, "greedy_head_available", lambda: False)():
            return GreedyHead(head.packed, head.out_features, kernels)
        return None

    def ids(self, h: torch.Tensor) -> list[int] | None:
        """The argmax of h's fp32 logits per row (h: [rows <= 16, K], fp32, normed); None when a
        screened logit is not finite (the full head then decides)."""
        if h.shape[0] > 16:
            return None
        ids = self.k.greedy_ids(h.contiguous(), self.screen, self.panels, self.vocab, self.max_norm, self.error).tolist()
        return None if -1 in ids else ids


def head_weight(panels: torch.Tensor, vocab: int) -> torch.Tensor:
    """W [vocab, K] in fp32 back from pack_linear's panels."""
    return panels.permute(0, 2, 1).reshape(-1, panels.shape[1])[:vocab].float()


class Int8Head:
    """The greedy head's argmax from an int8 screen (kernels.cpp `greedy_ids_i8`, AVX-512 VNNI): 12.5
    MB of the tiny model's head read a step instead of bf16's 25. Each column v is q_v = round(w_v /
    s_v), s_v = max|w_v| / 127; what the kernel's bound needs of it is measured here, in float64, from
    the very numbers it uses: e_v = max_k |w_vk - s_v q_vk|, A_v = e_v + gamma_K max|w_v| (`linear`'s
    fp32 chain over K terms), W1_v = s_v |q_v|_1, each rounded up; comp_v = 128 sum_k q_vk undoes the
    +128 that makes x's bytes unsigned. An all-zero column has s_v = 0: screened 0, bound 0, exact.
    `bound` scales A_v and W1_v: 1 is the proof's; tests set 0 to show the screen alone can be wrong."""

    screen_kind = "int8"

    def __init__(self, panels: torch.Tensor, vocab: int, kernels, bound: float = 1.0) -> None:
        weight = head_weight(panels, vocab).double()
        k_dim = weight.shape[1]
        tiles, quads = -(-vocab // 16), -(-k_dim // 4)
        top = weight.abs().amax(dim=1)
        scale = (top / 127).float().double()  # the float the kernel multiplies by
        q = torch.where(scale[:, None] > 0, torch.round(weight / scale.clamp_min(1e-300)[:, None]), 0.0)
        q = q.clamp(-127, 127)
        gamma = k_dim * 2.0 ** -24 / (1 - k_dim * 2.0 ** -24)
        a = (weight - scale[:, None] * q).abs().amax(dim=1) + gamma * top
        w1 = scale * q.abs().sum(dim=1)
        up = 1 + 2.0 ** -20  # float64 -> float32 rounds to nearest: this keeps the bounds above
        cols = torch.zeros(3, tiles * 16)
        cols[0, :vocab] = scale.float()
        cols[1, :vocab], cols[2, :vocab] = (a * up * bound).float(), (w1 * up * bound).float()
        padded = torch.zeros(tiles * 16, quads * 4, dtype=torch.int8)
        padded[:vocab, :k_dim] = q.to(torch.int8)
        # [tiles, quads, 16, 4]: tile t, quad p holds W[16 t + c, 4 p + j] at [t, p, c, j], VNNI's operand order
        self.screen = padded.reshape(tiles, 16, quads, 4).permute(0, 2, 1, 3).contiguous()
        self.cols = cols
        self.comp = torch.zeros(tiles * 16, dtype=torch.int32)
        self.comp[:vocab] = (128 * q.sum(dim=1)).to(torch.int32)
        self.k = kernels
        self.panels = panels
        self.vocab = vocab

    def ids(self, h: torch.Tensor) -> list[int] | None:
        """As GreedyHead.ids."""
        if h.shape[0] > 16:
            return None
        ids = self.k.greedy_ids_i8(h.contiguous(), self.screen, self.cols, self.comp, self.panels, self.vocab).tolist()
        return None if -1 in ids else ids
