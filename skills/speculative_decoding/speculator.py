"""Per-request drafting and greedy acceptance, engine-agnostic.

An engine asks `Speculator.start(prompt_ids, params)` for a `Drafter` when a request starts
decoding (None: this request does not speculate), then each step:

    draft = drafter.propose(output_ids, limit)       # up to `limit` tokens, maybe none
    ... one forward over [last token] + draft ...    # K+1 rows, logits for every row
    n = accept_greedy(draft, greedy_ids)             # greedy_ids: argmax of each row
    emitted = greedy_ids[: n + 1]                    # the accepted drafts + the model's own token
    drafter.update(output_ids_after, draft, n, emitted=len(emitted))

Greedy only: a request with temperature > 0 does not speculate (`start` returns None), so its
tokens are sampled exactly as without speculation (rejection sampling is not implemented).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .proposer import NgramProposer, PredictionProposer


def accept_greedy(draft: Sequence[int], greedy_ids: Sequence[int]) -> int:
    """The number of draft tokens accepted: the longest prefix where the model's greedy token
    (row i's argmax predicts the token after draft[:i]) equals the draft."""
    n = 0
    while n < len(draft) and greedy_ids[n] == draft[n]:
        n += 1
    return n


@dataclass(frozen=True)
class SpecConfig:
    num_speculative_tokens: int = 16  # K: the most draft tokens verified in one forward
    initial_tokens: int = 8  # K for a request's first draft (adaptive K grows and shrinks it)
    min_tokens: int = 2  # adaptive K never drops below this
    # Adaptive K: double it after a fully accepted draft, shrink it to accepted + 2 after a
    # rejection. Off by default: on bug-fix items the output rejoins the prediction right after an
    # edit, and a shrunk K then misses the long run that follows (measured: slower).
    adaptive: bool = False
    use_prediction: bool = True  # draft from the request's `prediction`
    ngram: bool = True  # prompt-lookup fallback when the prediction gives nothing (or there is none)
    ngram_max: int = 4
    ngram_min: int = 2
    match_max: int = 8  # longest output suffix looked up in the prediction
    match_min: int = 1
    # Fixed attention shape (the lossless guarantee under bf16): every step of a speculating
    # request is a verify chunk (1 + len(draft) rows, an empty draft included) whose attention
    # has its queries padded to K + 1 rows and reads keys in whole blocks of `key_block` (the CPU
    # flash-attention kernel's KV split), so each row's numerics do not depend on what was
    # drafted around it (the matmuls are row-count invariant already). 0: plain decode steps
    # when nothing is drafted and exact keys (bf16 rounding then depends on the drafts).
    key_block: int = 512

    def __post_init__(self) -> None:
        if self.num_speculative_tokens < 1:
            raise ValueError("num_speculative_tokens must be >= 1")
        if not 1 <= self.min_tokens <= self.num_speculative_tokens:
            raise ValueError("min_tokens must be between 1 and num_speculative_tokens")


@dataclass
class Draft:
    tokens: list[int]
    source: str  # "prediction" | "ngram" | "" (none, or filler the engine added: not counted as proposed)

    @property
    def proposed(self) -> int:
        return len(self.tokens) if self.source else 0


class Drafter:
    """One request's proposers and adaptive K."""

    def __init__(self, cfg: SpecConfig, prompt_ids: Sequence[int], prediction: Sequence[int] | None) -> None:
        self.cfg = cfg
        self.k = min(cfg.initial_tokens, cfg.num_speculative_tokens)
        self.prediction = (PredictionProposer(prediction, cfg.match_max, cfg.match_min)
                           if cfg.use_prediction and prediction else None)
        self.ngram = NgramProposer(prompt_ids, cfg.ngram_max, cfg.ngram_min) if cfg.ngram else None
        self._seen = 0  # output tokens already handed to the n-gram index
        # Per request, for usage: draft tokens from the prediction accepted / rejected.
        self.accepted_prediction = 0
        self.rejected_prediction = 0

    def propose(self, output_ids: Sequence[int], limit: int) -> Draft:
        k = min(self.k, limit)
        if k <= 0:
            return Draft([], "")
        self._sync_ngram(output_ids)
        # Both proposers look; the one whose match with the output's last tokens is longer wins
        # (ties: the prediction). A prediction the output is walking along always wins; a short
        # re-sync match loses to prompt lookup that found a longer one (e.g. the model repeating
        # itself, or the code fence before the code, which only the prompt has).
        pred, pred_match = ([], 0) if self.prediction is None else self.prediction.propose_scored(output_ids, k)
        gram, gram_match = ([], 0) if self.ngram is None else self.ngram.propose_scored(k)
        if pred and pred_match >= gram_match:
            return Draft(pred, "prediction")
        if gram:
            return Draft(gram, "ngram")
        return Draft([], "")

    def update(self, output_ids: Sequence[int], draft: Draft, accepted: int, emitted: int) -> None:
        """After a verify step: `accepted` of the draft were accepted, `emitted` tokens appended to output_ids
        (accepted + the bonus token, or fewer where a stop condition cut the run)."""
        used = min(accepted, emitted, draft.proposed)
        if draft.source == "prediction":
            self.accepted_prediction += used
            self.rejected_prediction += draft.proposed - used
        if self.prediction is not None:
            self.prediction.advance(output_ids, emitted)
        if self.cfg.adaptive and draft.proposed:
            if accepted >= draft.proposed:
                self.k = min(self.k * 2, self.cfg.num_speculative_tokens)
            else:
                self.k = max(self.cfg.min_tokens, min(self.k, accepted + 2))

    def _sync_ngram(self, output_ids: Sequence[int]) -> None:
        if self.ngram is not None and len(output_ids) > self._seen:
            self.ngram.extend(output_ids[self._seen:])
            self._seen = len(output_ids)


class Speculator:
    """Makes a `Drafter` per request; the engine holds one of these (None: no speculation).

    `verify_rows` (K + 1, or None) and `key_block` tell the engine the fixed attention shape."""

    def __init__(self, cfg: SpecConfig | None = None) -> None:
        self.cfg = cfg or SpecConfig()
        self.verify_rows = self.cfg.num_speculative_tokens + 1 if self.cfg.key_block else None
        self.key_block = self.cfg.key_block

    def start(self, prompt_ids: Sequence[int], params) -> Drafter | None:
        if not params.greedy:
            return None  # sampled requests decode one token per step (no rejection sampling here)
        prediction = getattr(params, "prediction", None)
        if prediction is None and not self.cfg.ngram:
            return None
        return Drafter(self.cfg, prompt_ids, prediction)
