"""Continuous batching with chunked prefill under a token budget per step.

Each step: every decoding sequence gets one token, or, where it holds a draft (speculative
decoding), a verify chunk of 1 + len(draft) tokens; then prompts are prefilled in chunks
(partly prefilled ones first, then new ones FCFS while a slot is free) until the budget is
spent. Sequences hold a slot from admission to finish; the slots in use are kept
contiguous (0..S-1) by moving the last slot into a freed one, so the
decode attention reads a dense slot range and no block tables are needed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .sequence import Sequence, Status


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 256  # token budget per step, decodes included
    max_model_len: int = 4096

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be at least max_num_seqs (one decode token each)")


@dataclass(frozen=True)
class Move:
    """Copy a sequence's state from slot src to dst (its first `length` positions)."""

    src: int
    dst: int
    length: int


@dataclass(frozen=True)
class ScheduledStep:
    decodes: list[Sequence]  # in slot order
    prefills: list[tuple[Sequence, int]]  # (sequence, chunk length), chunk starts at num_computed
    num_slots: int  # slots in use: 0..num_slots-1
    # Decoding sequences with a draft: [last token] + seq.draft.tokens at num_computed, every row sampled.
    verifies: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return (len(self.decodes) + sum(1 + s.draft_len for s in self.verifies)
                + sum(n for _, n in self.prefills))


class Scheduler:
    def __init__(self, cfg: SchedulerConfig) -> None:
        self.cfg = cfg
        self.waiting: deque[Sequence] = deque()
        self.slots: list[Sequence] = []  # index = slot

    def add(self, seq: Sequence) -> None:
        if len(seq.prompt_ids) + seq.params.max_tokens > self.cfg.max_model_len:
            raise ValueError(f"prompt + max_tokens exceeds max_model_len {self.cfg.max_model_len}")
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.slots)

    @property
    def num_running(self) -> int:
        return len(self.slots)

    def schedule(self) -> ScheduledStep | None:
        budget = self.cfg.max_num_batched_tokens
        running = [s for s in self.slots if not s.prefilling]
        budget -= len(running)  # one token each is always granted
        decodes: list[Sequence] = []
        verifies: list[Sequence] = []
        for seq in running:
            if seq.draft is not None:
                if seq.draft_len > budget:  # drafts only take what the budget has left
                    seq.draft.tokens = seq.draft.tokens[:max(budget, 0)]
                budget -= seq.draft_len
            (decodes if seq.draft is None else verifies).append(seq)
        prefills: list[tuple[Sequence, int]] = []
        for seq in self.slots:
            if seq.prefilling and budget > 0:
                n = min(seq.remaining_prompt, budget)
                prefills.append((seq, n))
                budget -= n
        while self.waiting and budget > 0 and len(self.slots) < self.cfg.max_num_seqs:
            seq = self.waiting.popleft()
            seq.slot, seq.status = len(self.slots), Status.RUNNING
            self.slots.append(seq)
            n = min(seq.remaining_prompt, budget)
            prefills.append((seq, n))
            budget -= n
        if not decodes and not verifies and not prefills:
            return None
        return ScheduledStep(decodes, prefills, len(self.slots), verifies)

    def finish(self, seq: Sequence, reason: str) -> list[Move]:
        """Finish a waiting or running sequence; returns the state moves that keep slots contiguous."""
        seq.status, seq.finish_reason = Status.FINISHED, reason
        if seq.slot is None:
            self.waiting.remove(seq)
            return []
        freed, seq.slot = seq.slot, None
        last = self.slots.pop()
        if last is seq:
            return []
        self.slots[freed] = last
        src, last.slot = last.slot, freed
        return [Move(src, freed, last.num_computed)]
