"""The greedy token of the fp32 logits, reading the lm_head in bf16: for rows that ask for no logprobs.

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
"""

from __future__ import annotations

import torch

MAX_K = 1024  # 2^-8 + 2^-18 + 2 * 1024 * 2^-24 = 0.004032
ERROR = 0.0042  # that, with 4% to spare for the rounding of the norms and of the bound itself


class GreedyHead:
    def __init__(self, panels: torch.Tensor, vocab: int, kernels, error: float = ERROR) -> None:
        # W [vocab, K], the same floats (from fp32 panels, or bf16 ones holding bf16 values)
        weight = panels.permute(0, 2, 1).reshape(-1, panels.shape[1])[:vocab].float()
        self.k = kernels
        self.panels = panels
        self.vocab = vocab
        self.error = error
        self.screen = kernels.pack_screen(weight.contiguous())
        self.max_norm = float(weight.double().norm(dim=1).max()) * (1 + 1e-6)

    @classmethod
    def build(cls, head, kernels) -> GreedyHead | None:
        """For the model's lm_head (linear.Linear); None where it cannot be exact here: not the C++
        panels, no AVX-512 BF16, or K past MAX_K."""
        if head.kind != "native" or not getattr(kernels, "greedy_head_available", lambda: False)() \
                or head.in_features > MAX_K:
            return None
        return cls(head.packed, head.out_features, kernels)

    def ids(self, h: torch.Tensor) -> list[int] | None:
        """The argmax of h's fp32 logits per row (h: [rows <= 16, K], fp32, normed); None when a
        screened logit is not finite (the full head then decides)."""
        if h.shape[0] > 16:
            return None
        ids = self.k.greedy_ids(h.contiguous(), self.screen, self.panels, self.vocab, self.max_norm, self.error).tolist()
        return None if -1 in ids else ids
