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
from dataclasses import dataclass, replace

from .proposer import LookupProposer


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
    ngram: bool = True  # prompt lookup: the prompt and the output so far are draft sources too
    match_max: int = 16  # longest output suffix compared at a candidate place (ranks candidates)
    match_min: int = 1  # shortest match that makes a place a candidate
    near: int = 2  # places at most this far ahead of the prediction cursor win ties over the output's history
    # Draft length when unsure (measured on setting B's traces: shorter drafts there lose a little
    # acceptance and save more verify rows): a place matched on n tokens only drafts at most
    # `unsure_tokens[n - 1]` (0, or n past the tuple: K); with no match at all, `fallback_tokens`
    # from where the output left its last copy (0: no draft). Following a copy always drafts K.
    unsure_tokens: tuple[int, ...] = (5,)
    fallback_tokens: int = 1
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
    """One request's lookup proposer and adaptive K."""

    def __init__(self, cfg: SpecConfig, prompt_ids: Sequence[int], prediction: Sequence[int] | None) -> None:
        self.cfg = cfg
        # K drafts at most K; `initial_tokens` is where adaptive K starts.
        self.k = min(cfg.initial_tokens, cfg.num_speculative_tokens) if cfg.adaptive else cfg.num_speculative_tokens
        # The prediction drafted from (None: none, or not used); the engine reports prediction usage iff set.
        self.prediction = list(prediction) if cfg.use_prediction and prediction else None
        self.lookup = LookupProposer(prompt_ids, self.prediction, use_prompt=cfg.ngram,
                                     max_match=cfg.match_max, min_match=cfg.match_min, near=cfg.near,
                                     unsure_tokens=cfg.unsure_tokens, fallback_tokens=cfg.fallback_tokens)
        # Per request, for usage: draft tokens from the prediction accepted / rejected.
        self.accepted_prediction = 0
        self.rejected_prediction = 0

    def propose(self, output_ids: Sequence[int], limit: int) -> Draft:
        k = min(self.k, limit)
        if k <= 0:
            return Draft([], "")
        tokens, _, from_prediction = self.lookup.propose_scored(output_ids, k)
        if not tokens:
            return Draft([], "")
        # "prediction": the copy starts inside the prediction (it may run on past its end into
        # the prompt's text after it, e.g. the closing code fence); anything else is prompt lookup.
        return Draft(tokens, "prediction" if from_prediction else "ngram")

    def update(self, output_ids: Sequence[int], draft: Draft, accepted: int, emitted: int) -> None:
        """After a verify step: `accepted` of the draft were accepted, `emitted` tokens appended to output_ids
        (accepted + the bonus token, or fewer where a stop condition cut the run)."""
        used = min(accepted, emitted, draft.proposed)
        if draft.source == "prediction":
            self.accepted_prediction += used
            self.rejected_prediction += draft.proposed - used
        self.lookup.update(output_ids, emitted)
        if self.cfg.adaptive and draft.proposed:
            if accepted >= draft.proposed:
                self.k = min(self.k * 2, self.cfg.num_speculative_tokens)
            else:
                self.k = max(self.cfg.min_tokens, min(self.k, accepted + 2))


# K and the unsure caps by the cost of a verify step's matmuls (engine_core's few-row matmul), for
# `Speculator(auto_k=True)`: on AMX tiles (oneDNN on an AMX CPU, or small_gemm's AMX path) a verify
# step of up to 17 rows costs about what 1 row does, so longer drafts are nearly free; every other
# matmul's cost grows with the rows (small_gemm's AVX-512 loop: ~0.8 ms a row on top of ~5 ms at 1
# row, SmolLM2-135M on an AMD EPYC), so a draft is worth its rows only where it is likely to be
# accepted. Measured on setting B (NOTE.md).
AUTO_K = {"flat": 12, "growing": 6}
AUTO_UNSURE = {"flat": (5,), "growing": (2, 3, 3)}


class Speculator:
    """Makes a `Drafter` per request; the engine holds one of these (None: no speculation).

    `verify_rows` (K + 1, or None) and `key_block` tell the engine the fixed attention shape.
    auto_k: K from AUTO_K once the engine has chosen its few-row matmul (`matmul_chosen`); until
    then the largest, so the engine checks row counts up to it."""

    def __init__(self, cfg: SpecConfig | None = None, auto_k: bool = False) -> None:
        self.cfg = cfg or SpecConfig()
        self.auto_k = auto_k
        if auto_k:
            self.cfg = replace(self.cfg, num_speculative_tokens=max(AUTO_K.values()))

    @property
    def verify_rows(self) -> int | None:
        return self.cfg.num_speculative_tokens + 1 if self.cfg.key_block else None

    @property
    def key_block(self) -> int:
        return self.cfg.key_block

    def matmul_chosen(self, flat_in_rows: bool) -> None:
        """Whether the engine's few-row matmul costs about the same at 1 and at ~13 rows (AMX tiles:
        oneDNN on an AMX CPU, or small_gemm on its AMX path; row_invariance.flat_in_rows)."""
        if self.auto_k:
            cost = "flat" if flat_in_rows else "growing"
            self.cfg = replace(self.cfg, num_speculative_tokens=AUTO_K[cost], unsure_tokens=AUTO_UNSURE[cost])

    def start(self, prompt_ids: Sequence[int], params) -> Drafter | None:
        if not params.greedy:
            return None  # sampled requests decode one token per step (no rejection sampling here)
        prediction = getattr(params, "prediction", None)
        if prediction is None and not self.cfg.ngram:
            return None
        return Drafter(self.cfg, prompt_ids, prediction)
