"""A request inside the engine: its tokens, how far its state is computed, and its slot."""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from skills.engine_api import SamplingParams, TokenOutput

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


Sink = Callable[[list[TokenOutput]], None]


@dataclass(eq=False)
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    sink: Sink = lambda outputs: None  # where outputs go (thread-safe, called from the engine thread)
    is_cancelled: Callable[[], bool] = lambda: False
    seq_id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # leading tokens whose state is in the pool
    slot: int | None = None
    status: Status = Status.WAITING
    finish_reason: str | None = None
    generator: torch.Generator | None = None  # seeded sampling
    # Speculative decoding (see skills/speculative_decoding): the request's drafter (None: one
    # token per step) and this step's draft, verified after last_token in one chunk.
    drafter: object | None = None
    draft: object | None = None  # a Draft (tokens, source) or None

    def __post_init__(self) -> None:
        if self.params.seed is not None and not self.params.greedy:
            self.generator = torch.Generator().manual_seed(self.params.seed)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def prefilling(self) -> bool:
        return self.num_computed < len(self.prompt_ids)

    @property
    def last_token(self) -> int:
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]

    @property
    def draft_len(self) -> int:
        return 0 if self.draft is None else len(self.draft.tokens)

    @property
    def remaining_prompt(self) -> int:
        return len(self.prompt_ids) - self.num_computed
