"""Next tokens from a step's logits: greedy rows in one argmax, sampled rows in one batch.

A sampled row draws one uniform number from its own generator (seeded requests: the same tokens
whatever else shares the step) and inverts the cumulative distribution of its temperature-scaled
softmax, cut to the top-p nucleus. Every operation is per row, so a row's token does not depend on
the rows beside it. Top-p looks for the nucleus among a row's heads (its tokens within a factor
of its heaviest: a few hundred, sorted with every row's in one sort), then among wider heads, and
sorts the whole vocabulary (~2 ms a row) only where the nucleus is wider still.

Logprobs are of the raw model distribution (before temperature / top-p), as vLLM reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from skills.engine_api import SamplingParams, TokenLogprob

from .kernels import Kernels

# Where top-p looks for the nucleus before sorting a whole row: the tokens at least this fraction
# of the row's heaviest (SmolLM2 at temperature 1: 88% of its 0.9-nuclei within 1e-3, all within 1e-4).
_HEADS = (1e-3, 1e-5)
_UNSEEDED = torch.Generator()  # requests without a seed share one stream
_UNSEEDED.seed()


@dataclass(frozen=True)
class SampleRequest:
    params: SamplingParams
    generator: torch.Generator | None


def greedy_ids_only(requests: list[SampleRequest]) -> bool:
    """Whether every row is greedy and asks no logprobs: its token ids are all a step needs."""
    return all(r.params.greedy and r.params.top_logprobs is None for r in requests)


def sample(logits: torch.Tensor, requests: list[SampleRequest]) -> tuple[list[int], list[TokenLogprob | None]]:
    """logits: [rows, vocab], one row per request."""
    if Kernels.argmax_rows is not None and logits.dtype == torch.bfloat16 and greedy_ids_only(requests):
        return Kernels.argmax_rows(logits).tolist(), [None] * len(requests)
    logits = logits.float()  # (torch's argmax over bf16 rows is 4x slower than the copy and an fp32 argmax)
    rows = [i for i, req in enumerate(requests) if not req.params.greedy]
    if rows and len(rows) == len(requests):
        ids = _sample_rows(logits, requests)
    else:
        ids = logits.argmax(dim=-1)
        if rows:
            ids[rows] = _sample_rows(logits.index_select(0, torch.tensor(rows)), [requests[i] for i in rows])
    chosen = ids.tolist()
    return chosen, _logprobs(logits, chosen, requests)


def _sample_rows(logits: torch.Tensor, requests: list[SampleRequest]) -> torch.Tensor:
    """logits: one fp32 row per sampled request (left unchanged). Top-p rows go through the nucleus,
    the others through the whole vocabulary in id order: in one C++ pass per row with the native
    kernels (skills/cpu_kernels/top_p.cpp, the same algorithm), else in torch."""
    temperature = torch.tensor([r.params.temperature for r in requests], dtype=torch.float32)
    uniform = torch.cat([torch.rand(1, generator=r.generator or _UNSEEDED) for r in requests])
    top_p = torch.tensor([r.params.top_p for r in requests], dtype=torch.float32)
    if Kernels.sample_top_p is not None:
        return Kernels.sample_top_p(logits.contiguous(), temperature, top_p, uniform)
    return _sample_rows_torch(logits, temperature, top_p, uniform)


def _sample_rows_torch(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                       uniform: torch.Tensor) -> torch.Tensor:
    weights = logits / temperature.unsqueeze(1)  # a copy, changed in place below
    weights.sub_(weights.amax(dim=-1, keepdim=True)).exp_()  # the softmax's numerators, the largest 1
    plain = top_p >= 1.0
    if plain.all():
        return _invert(weights, uniform)
    if not plain.any():
        return _sample_nucleus(weights, top_p, uniform)
    ids = torch.empty(len(top_p), dtype=torch.long)
    ids[plain] = _invert(weights[plain], uniform[plain])
    ids[~plain] = _sample_nucleus(weights[~plain], top_p[~plain], uniform[~plain])
    return ids


def _heads(weights: torch.Tensor, cut: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's tokens of weight >= `cut` (its heaviest weighs 1), heaviest first (ties by token
    id), zero-padded to the batch's longest: one sort of all of them, keyed by row."""
    rows, cols = (weights >= cut).nonzero(as_tuple=True)
    picked = weights[rows, cols]
    key = rows.double() * 2 + (1 - picked.double())  # row first, then weight descending
    by_key = key.sort(stable=True).indices
    rows, cols, picked = rows[by_key], cols[by_key], picked[by_key]
    counts = torch.bincount(rows, minlength=weights.shape[0])
    place = torch.arange(len(rows)) - (counts.cumsum(0) - counts)[rows]
    width = int(counts.max())
    values = weights.new_zeros(weights.shape[0], width)
    order = torch.zeros(weights.shape[0], width, dtype=torch.long)
    values[rows, place], order[rows, place] = picked, cols
    return values, order


def _invert(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The token where each row's cumulative weight passes its uniform share of the row's total
    (torch accumulates a float cumsum in double on the CPU)."""
    cdf = weights.cumsum(dim=-1)
    target = (uniform * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=weights.shape[1] - 1)


def _sample_nucleus(weights: torch.Tensor, top_p: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Top-p: the smallest most-likely prefix whose mass reaches top_p (the first token always
    stays), looked for among each row's heads, then its wider heads, then its whole vocabulary."""
    mass = top_p * weights.sum(dim=-1)
    ids = torch.empty(len(top_p), dtype=torch.long)
    open_rows = torch.arange(len(top_p))
    for cut in (*_HEADS, None):
        part = weights if len(open_rows) == len(top_p) else weights[open_rows]
        values, order = _heads(part, cut) if cut else part.sort(dim=-1, descending=True)
        found = values.sum(dim=-1) >= mass[open_rows]
        if cut is None:
            found[:] = True  # rounding may leave the whole vocabulary a hair short of the mass
        rows = open_rows[found]
        ids[rows] = _pick_sorted(values[found], order[found], mass[rows], uniform[rows])
        open_rows = open_rows[~found]
        if not len(open_rows):
            break
    return ids


def _pick_sorted(values: torch.Tensor, order: torch.Tensor, mass: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """values: each row's weights in descending order, `order` their token ids; keeps the prefix
    that reaches `mass`."""
    before = values.cumsum(dim=-1) - values
    kept = torch.where(before < mass.unsqueeze(1), values, 0.0)
    return order.gather(1, _invert(kept, uniform).unsqueeze(1)).squeeze(1)


def _logprobs(logits: torch.Tensor, chosen: list[int],
              requests: list[SampleRequest]) -> list[TokenLogprob | None]:
    out: list[TokenLogprob | None] = [None] * len(requests)
    rows = [i for i, r in enumerate(requests) if r.params.top_logprobs is not None]
    if not rows:
        return out
    k = max(requests[i].params.top_logprobs for i in rows)
    lp = torch.log_softmax(logits[rows], dim=-1)
    top_vals, top_ids = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
    picked = lp[torch.arange(len(rows)), torch.tensor([chosen[i] for i in rows])].tolist()
    top_vals, top_ids = top_vals.tolist(), top_ids.tolist()
    for j, i in enumerate(rows):
        n = requests[i].params.top_logprobs
        out[i] = TokenLogprob(chosen[i], picked[j], tuple(zip(top_ids[j][:n], top_vals[j][:n])))
    return out
