"""The model runner: owns the model and the state pool; turns a scheduled step into tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from skills.engine_api import TokenLogprob

from .batch import (
    DecodeBatch,
    ForwardBatch,
    PrefillSpan,
    chunk_mask,
    decode_mask,
    verify_mask,
)
from .kernels import Kernels
from .model import CausalLM
from .sampler import SampleRequest, greedy_ids_only, sample
from .scheduler import Move, ScheduledStep
from .sequence import Sequence
from .state import StatePool


@dataclass(frozen=True)
class StepResult:
    sampled: list[Sequence]  # the sequences that got a token this step, in order
    token_ids: list[int]
    logprobs: list[TokenLogprob | None]
    # Verify chunks, in step.verifies order: per sequence, the greedy token after each of its
    # 1 + len(draft) rows, and their logprobs.
    verified: list[tuple[Sequence, list[int], list[TokenLogprob | None]]] = ()


class ModelRunner:
    def __init__(self, model: CausalLM, max_num_seqs: int, max_model_len: int, dtype: torch.dtype,
                 key_block: int = 0, query_rows: int = 0) -> None:
        """key_block > 0: verify chunks attend keys in whole blocks of this many, with their queries
        padded to `query_rows` (see verify_mask); the pool then holds max_model_len + query_rows
        positions rounded up to a whole block."""
        self.model = model
        self.group = model.cfg.group_size
        self.dtype = dtype
        self.key_block = key_block
        self.query_rows = query_rows
        self.verified_rows = 0  # set by the loader's check (step_invariance.py); 0: not checked
        self.engine_cfg = None  # the EngineConfig this runner was sized for (loader.py)
        pool_len = max_model_len + query_rows
        if key_block:
            pool_len = -(-pool_len // key_block) * key_block
        self.pool = StatePool(model.state_specs(), max_num_seqs, pool_len, dtype)

    def compile(self, names: tuple[str, ...]) -> None:
        """Swap in torch.compile'd kernels (kernels.py) by name; shapes are dynamic, one graph each."""
        Kernels.use_compiled(names)

    def row_count_invariant(self) -> bool:
        """Whether verify steps of up to `verified_rows` rows were checked, through this runner, to
        give every row the logits of a one-token decode (step_invariance.py, at load). Then an
        undrafted step of a speculating request can be a plain 1-row decode."""
        return self.verified_rows > 0

    def _screens(self, requests: list[SampleRequest]) -> bool:
        """Whether the head's int8 screen may pick this step's tokens: every row greedy, none asking
        for logprobs (the screen gives ids, not logits), and the engine allows it."""
        allowed = self.engine_cfg is None or self.engine_cfg.greedy_screen
        return allowed and greedy_ids_only(requests)

    def apply(self, moves: list[Move]) -> None:
        for move in moves:
            self.pool.move(move.src, move.dst, move.length)

    @torch.inference_mode()
    def run(self, step: ScheduledStep) -> StepResult:
        batch, sampled = self.build(step)
        # Sample rows: the decodes, then every row of each verify chunk, then finished prompts.
        requests = [SampleRequest(s.params, s.generator) for s in step.decodes]
        for seq in step.verifies:
            requests += [SampleRequest(seq.params, seq.generator)] * (1 + seq.draft_len)
        requests += [SampleRequest(s.params, s.generator) for s in sampled[len(step.decodes):]]
        hidden = self.model.final_hidden(batch, self.pool)
        ids = self.model.greedy_ids(hidden) if self._screens(requests) else None
        if ids is None:
            ids, logprobs = sample(self.model.head(hidden), requests)
        else:
            logprobs = [None] * len(ids)
        verified, row = [], len(step.decodes)
        for seq in step.verifies:
            n = 1 + seq.draft_len
            verified.append((seq, ids[row: row + n], logprobs[row: row + n]))
            row += n
        rest = slice(row, None)
        decodes = slice(0, len(step.decodes))
        return StepResult(sampled, ids[decodes] + ids[rest], logprobs[decodes] + logprobs[rest], verified)

    def build(self, step: ScheduledStep) -> tuple[ForwardBatch, list[Sequence]]:
        """Rows: decodes, verify chunks, prefill chunks. `sampled`: the decodes and the sequences
        whose prompt ends in this step (the verify chunks' rows are all sampled too, see run)."""
        ids: list[int] = [s.last_token for s in step.decodes]
        positions: list[int] = [s.num_tokens - 1 for s in step.decodes]
        slots: list[int] = [s.slot for s in step.decodes]
        sample_rows = list(range(len(ids)))
        sampled = list(step.decodes)
        spans: list[PrefillSpan] = []
        alone = Kernels.rows_alone(self.dtype)
        for seq in step.verifies:
            # A verify chunk is a prefill chunk at the sequence's current position: the last
            # token (not yet computed) then the draft, causal, every row's logits kept. K/V of
            # rejected drafts stay in the pool beyond num_computed, masked by length until overwritten.
            start, row, chunk = seq.num_computed, len(ids), [seq.last_token, *seq.draft.tokens]
            n = len(chunk)
            ids += chunk
            positions += range(start, start + n)
            slots += [seq.slot] * n
            if not alone:  # row attention needs no span: each row's numerics are its own anyway
                spans.append(self._verify_span(seq.slot, start, n, row))
            sample_rows += range(row, row + n)
        for seq, n in step.prefills:
            start, row = seq.num_computed, len(ids)
            ids += seq.prompt_ids[start: start + n]
            positions += range(start, start + n)
            slots += [seq.slot] * n
            if not alone:
                spans.append(PrefillSpan(seq.slot, start, n, row, chunk_mask(start, n, self.group, self.dtype)))
            if start + n == len(seq.prompt_ids):
                sample_rows.append(row + n - 1)
                sampled.append(seq)
        batch = ForwardBatch(
            input_ids=torch.tensor(ids, dtype=torch.long),
            positions=torch.tensor(positions, dtype=torch.long),
            slots=torch.tensor(slots, dtype=torch.long),
            num_decodes=len(step.decodes),
            decode=self._decode_batch(step) if step.decodes and not alone else None,
            prefills=tuple(spans),
            sample_rows=torch.tensor(sample_rows, dtype=torch.long),
            rows_alone=alone,
        )
        return batch, sampled

    def _verify_span(self, slot: int, start: int, n: int, row: int) -> PrefillSpan:
        if not self.key_block:
            return PrefillSpan(slot, start, n, row, chunk_mask(start, n, self.group, self.dtype))
        keys = min(-(-(start + n) // self.key_block) * self.key_block, self.pool.max_len)
        mask = verify_mask(start, n, keys, self.group, self.dtype, self.query_rows)
        return PrefillSpan(slot, start, n, row, mask, keys, self.query_rows)

    def _decode_batch(self, step: ScheduledStep) -> DecodeBatch:
        lengths = [1] * step.num_slots  # slots not decoding this step attend one (finite) key
        for seq in step.decodes:
            lengths[seq.slot] = seq.num_tokens
        slots = [s.slot for s in step.decodes]
        max_len = max(lengths)
        return DecodeBatch(
            num_slots=step.num_slots,
            slots=torch.tensor(slots, dtype=torch.long),
            dense=slots == list(range(step.num_slots)),
            max_len=max_len,
            mask=decode_mask(lengths, max_len, self.dtype),
        )
