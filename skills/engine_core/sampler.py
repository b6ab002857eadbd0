"""Next tokens from a step's logits: greedy rows in one argmax, sampled rows one by one.

Logprobs are of the raw model distribution (before temperature / top-p), as vLLM reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from skills.openai_server.engine_api import SamplingParams, TokenLogprob


@dataclass(frozen=True)
class SampleRequest:
    params: SamplingParams
    generator: torch.Generator | None


def sample(logits: torch.Tensor, requests: list[SampleRequest]) -> tuple[list[int], list[TokenLogprob | None]]:
    """logits: [rows, vocab], one row per request."""
    logits = logits.float()
    ids = logits.argmax(dim=-1)
    for i, req in enumerate(requests):
        if not req.params.greedy:
            ids[i] = _sample_row(logits[i], req.params, req.generator)
    chosen = ids.tolist()
    return chosen, _logprobs(logits, chosen, requests)


def _sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = (sorted_probs.cumsum(0) - sorted_probs) >= params.top_p
        sorted_probs[drop] = 0.0
        return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


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
