"""The per-step recipe as one loop: constrained greedy decoding of one sequence.

An engine does the same per step for its whole batch (`BatchMasker.fill` over the batch's
constraints, one apply, argmax per row, `advance`, `jump_forward`); this loop is the reference
for it, framework-neutral: `forward(tokens)` runs the new tokens through the model (extending its
own KV cache) and returns the last position's logits as a numpy vector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .bitmask import BatchMasker
from .constraint import Constraint
from .jump_forward import JumpStats, jump_forward

Forward = Callable[[Sequence[int]], np.ndarray]


@dataclass(frozen=True)
class Decoded:
    tokens: list[int]  # EOS included when the grammar ended the sequence
    forwards: int  # model calls, the prompt's included
    finished: bool  # ended on EOS (the JSON complete), not cut at max_tokens


def constrained_greedy(forward: Forward, prompt: Sequence[int], constraint: Constraint, max_tokens: int,
                       masker: BatchMasker | None = None, jump: bool = True,
                       stats: JumpStats | None = None) -> Decoded:
    """Greedy decoding under `constraint`: mask, argmax, advance; with `jump`, forced tokens are
    appended and run through the model in the next forward together with the picked token."""
    masker = masker or BatchMasker(constraint.compiled.vocab_size, max_batch=1)
    logits = forward(list(prompt))
    forwards = 1
    out: list[int] = []
    while len(out) < max_tokens:
        row = masker.fill([constraint])
        scores = masker.apply(np.array(logits)[None], row)[0]  # a copy: the caller's logits stay
        token = int(np.argmax(scores))
        constraint.advance(token)
        out.append(token)
        new = [token]
        if jump and not constraint.ended:
            forced = jump_forward(constraint, max_tokens - len(out), stats=stats)
            out.extend(forced)
            new.extend(forced)
        if constraint.ended or len(out) >= max_tokens:
            break
        logits = forward(new)
        forwards += 1
    return Decoded(out, forwards, constraint.ended)
