"""A scheduled step -> one forward -> sampled tokens, and the snapshots taken on the way."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from skills.engine_core.sampler import SampleRequest, sample
from skills.engine_api import TokenLogprob

from .batch import build
from .config import HybridConfig
from .model import HybridModel
from .scheduler import ScheduledStep
from .sequence import HybridSequence
from .state import SaveBuffers, SlotStates


@dataclass(frozen=True)
class StepResult:
    sampled: list[HybridSequence]  # decodes, then sequences whose prompt ended this step
    token_ids: list[int]
    logprobs: list[TokenLogprob | None]


class Runner:
    def __init__(self, cfg: HybridConfig, model: HybridModel, states: SlotStates, share_prefix: bool = False) -> None:
        """share_prefix: decode rows read shared prompt prefixes once (sharing.py; the C++ kernels
        only, where equal tokens give bit-equal K/V)."""
        self.cfg = cfg
        self.model = model
        self.states = states
        self.share_prefix = share_prefix

    @torch.inference_mode()
    def run(self, step: ScheduledStep) -> StepResult:
        plan = build(step, self.model.padding, self.share_prefix)
        saves = SaveBuffers.allocate(self.cfg, len(plan.saves))
        greedy = bool(plan.sampled) and all(s.params.greedy and s.params.top_logprobs is None for s in plan.sampled)
        logits = self.model.forward(plan.batch, self.states, saves, greedy)
        for i, (seq, position) in enumerate(plan.saves):
            seq.snapshots[position] = saves.take(i)
        if isinstance(logits, list):  # the greedy head's token ids: no logits, no logprobs asked
            return StepResult(plan.sampled, logits, [None] * len(logits))
        ids, logprobs = sample(logits, [SampleRequest(s.params, s.generator) for s in plan.sampled])
        return StepResult(plan.sampled, ids, logprobs)
