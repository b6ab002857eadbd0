"""Jump-forward: append the tokens the grammar forces without a decode step for each.

Where a schema fixes the text (the next key of a closed object, `":"`, a `const`, the closing
`}`), the mask allows one token: a decode step would spend a forward just to confirm it. After
the model picks a token, the engine asks `jump_forward` for the forced continuation, appends it,
and runs `[picked] + forced` through the model in *one* forward (as a chunk at the sequence's
position, like a speculative verify chunk): the K/V of every forced token is written, and the
last row's logits give the next free choice. The forwards saved are the forced tokens (SmolLM2
on six of setting E's schemas: 32-72% of the output, NOTE.md).

Lossless for greedy decoding because every returned token is the only one its mask allows, so
masked argmax would have picked it too (`Constraint.forced(verify=True)` checks this token by
token). Two things stay the engine's: its forward must give a chunk's last row the logits it
would give in one-token steps (row invariance: see skills/speculative_decoding NOTE), and it must
stop on EOS or max_tokens as it would have step by step (`budget` cuts the forced run).
"""

from __future__ import annotations

from dataclasses import dataclass

from .constraint import Constraint


@dataclass
class JumpStats:
    jumps: int = 0  # calls that returned tokens
    tokens: int = 0  # forced tokens appended (decode steps saved)
    ends: int = 0  # forced EOS (a sequence ended without a step)


def jump_forward(constraint: Constraint, budget: int | None = None, *, verify: bool = True,
                 stats: JumpStats | None = None) -> list[int]:
    """The forced tokens after the constraint's current state, at most `budget` of them (the
    sequence's remaining max_tokens), and the constraint advanced over them: the caller appends
    them to the sequence (stopping at EOS as usual) and feeds all but a final EOS to its next
    forward. `verify=False` trusts llguidance's fast-forward tokens unchecked."""
    forced = constraint.forced(verify=verify)
    if budget is not None:
        forced = forced[:max(budget, 0)]
    for token in forced:
        constraint.advance(token)
    room = budget is None or len(forced) < budget
    if forced and room and constraint.done() and not constraint.ended:
        # the run closed the JSON: EOS is forced too (llguidance's ff tokens stop before it)
        forced.append(constraint.eos_id)
        constraint.advance(constraint.eos_id)
    if stats is not None and forced:
        stats.jumps += 1
        stats.tokens += len(forced)
        stats.ends += constraint.ended
    return forced
