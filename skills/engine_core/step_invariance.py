"""Whether a speculative verify step gives each token the numbers a one-token decode step gives it,
checked through the engine's own forward (the real layer loop, kernels and state pool) on this
machine, at load.

Lossless speculation in bf16 rests on it: a token verified among m - 1 drafts must get logits
bit-identical to those it gets when decoded alone, for every m a step can take and every place in
the chunk. Whether that holds depends on the CPU, not only on the code: oneDNN's bf16 matmul picks
its kernel and blocking by CPU and row count, and a check of the matmul alone on random rows can
miss a difference (a few fp32 ulps flip a bf16 rounding in ~1e-4 of the outputs) that 30 layers of
a real forward turn into different logits. So the check runs the forward itself: one-token decode
steps over a seeded token chain, then a verify chunk of every length 1..rows at a spread of start
places, each row compared bit for bit with its decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from skills.engine_api import SamplingParams

from .scheduler import ScheduledStep
from .sequence import Sequence

if TYPE_CHECKING:
    from .runner import ModelRunner


@dataclass(frozen=True)
class StepCheck:
    rows: int  # verify chunks of 1..rows rows were compared with one-token decodes
    ok: bool
    detail: str  # where the first difference was, or what was checked

    def to_json(self) -> dict:
        return {"rows": self.rows, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class _Chunk:
    """A verify chunk's draft as the runner reads it (`tokens`; `source` "" counts as filler)."""

    tokens: list[int]
    source: str = ""


def _start(length: int, rows: int) -> int:
    """Where a chunk of `length` rows starts in the chain: spread over every place it fits."""
    return (length * 5) % (rows - length + 1)


@torch.inference_mode()
def check_steps(runner: ModelRunner, rows: int, prompt_len: int = 24, seed: int = 0, slot: int = 0) -> StepCheck:
    """Decode `rows` tokens one step at a time after a seeded prompt, then verify chunks of every
    length 1..rows over the same tokens; ok when every row's logits equal its decode's exactly.
    Uses state slot `slot` (its contents are left overwritten: run it before serving)."""
    vocab = runner.model.cfg.vocab_size
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, vocab, (prompt_len + rows,), generator=gen).tolist()
    prompt, chain = tokens[:prompt_len], tokens[prompt_len - 1:]  # chain[i] sits at position prompt_len - 1 + i
    seq = Sequence(prompt, SamplingParams(max_tokens=rows + 1, temperature=0.0))
    seq.slot = slot
    runner.model(runner.build(ScheduledStep([], [(seq, prompt_len - 1)], slot + 1))[0], runner.pool)
    decoded = []
    for i in range(rows):
        seq.output_ids, seq.num_computed, seq.draft = chain[1: i + 1], prompt_len - 1 + i, None
        decoded.append(runner.model(runner.build(ScheduledStep([seq], [], slot + 1))[0], runner.pool))
    decoded = torch.cat(decoded)
    for length in range(1, rows + 1):
        s = _start(length, rows)
        seq.output_ids, seq.num_computed = chain[1: s + 1], prompt_len - 1 + s
        seq.draft = _Chunk(chain[s + 1: s + length])
        got = runner.model(runner.build(ScheduledStep([], [], slot + 1, [seq]))[0], runner.pool)
        same = (got == decoded[s: s + length]).all(dim=-1)
        if not bool(same.all()):
            row = int((~same).nonzero()[0])
            return StepCheck(rows, False, f"a verify chunk of {length} rows differs from one-token decodes "
                                          f"at its row {row} (chunks of 1..{length - 1} rows matched)")
    return StepCheck(rows, True, f"verify chunks of 1..{rows} rows equal one-token decodes bit for bit")
