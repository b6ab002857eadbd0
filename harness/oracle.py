"""Cross-implementation accuracy: greedy token match, with a near-tie allowed at the first divergence.

Tokens must be equal until the first position where they differ. There, each side's token must
be among the other side's top-k alternatives (vLLM's `check_logprobs_close` rule); after an
accepted near-tie the sequences are free to differ, so comparison of that prompt stops.
Ending is a token too: a side that stopped on end-of-sequence where the other went on must
have had end-of-sequence among the other side's alternatives, and vice versa.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from harness.generation import Generation

END = "<end-of-sequence>"  # stands for whatever string the model's EOS token decodes to


@dataclass
class PromptVerdict:
    prompt_id: str
    ok: bool
    matched: int  # tokens equal before the first divergence (or in total)
    diverged_at: int | None = None
    reason: str = ""


@dataclass
class Verdict:
    prompts: list[PromptVerdict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.prompts) and all(p.ok for p in self.prompts)

    @property
    def summary(self) -> str:
        bad = [p for p in self.prompts if not p.ok]
        ties = sum(1 for p in self.prompts if p.ok and p.diverged_at is not None)
        if not bad:
            return f"{len(self.prompts)} prompts match ({ties} with a near-tie)"
        first = bad[0]
        return f"{len(bad)}/{len(self.prompts)} prompts fail; first: {first.prompt_id}: {first.reason}"

    def to_json(self) -> dict:
        return {"verdict": "pass" if self.ok else "fail", "summary": self.summary,
                "prompts": [p.__dict__ for p in self.prompts]}


def _token_at(gen: Generation, i: int) -> str | None:
    """The token at i, END if the sequence stopped on end-of-sequence there, None if cut by length."""
    if i < len(gen.tokens):
        return gen.tokens[i]
    return END if gen.finish_reason == "stop" else None


def _alternatives(gen: Generation, i: int, eos: set[str]) -> set[str]:
    if i >= len(gen.top):
        return set()
    alts = set(gen.top[i])
    return alts | {END} if alts & eos else alts


def _show(tok: str | None) -> str:
    return "<cut by max_tokens>" if tok is None else repr(tok)


def _structure_problem(got: Generation) -> str | None:
    if got.usage_tokens is not None and got.usage_tokens != len(got.tokens):
        return f"usage says {got.usage_tokens} tokens but logprobs list {len(got.tokens)}"
    if len(got.top) < len(got.tokens):
        return f"top logprobs given for {len(got.top)} of {len(got.tokens)} tokens"
    return None


def _without_trailing_eos(got: Generation, eos: set[str]) -> Generation:
    """Some engines (vLLM) list the final end-of-sequence token among the output tokens and count it
    in usage; the reference does not. Keep its step's alternatives, drop the token itself."""
    if got.finish_reason != "stop" or not got.tokens or got.tokens[-1] not in eos:
        return got
    usage = got.usage_tokens - 1 if got.usage_tokens is not None else None
    return Generation(tokens=got.tokens[:-1], top=got.top, finish_reason="stop", text=got.text, usage_tokens=usage)


def compare(prompt_id: str, ref: Generation, got: Generation, eos: set[str]) -> PromptVerdict:
    got = _without_trailing_eos(got, eos)
    problem = _structure_problem(got)
    if problem:
        return PromptVerdict(prompt_id, False, 0, 0, problem)
    steps = max(len(ref.tokens), len(got.tokens)) + 1
    for i in range(steps):
        r, g = _token_at(ref, i), _token_at(got, i)
        if r == g:
            if r is None or r == END:
                return PromptVerdict(prompt_id, True, i)
            continue
        if g is None:
            return PromptVerdict(prompt_id, False, i, i, f"stack stopped for length after {i} tokens; the reference went on with {_show(r)}")
        if r is None:
            return PromptVerdict(prompt_id, False, i, i, f"stack went past max_tokens: token {i} is {_show(g)}")
        g_ok = g in _alternatives(ref, i, eos)
        r_ok = r in _alternatives(got, i, eos) or (i >= len(got.top) and g == END)
        if g_ok and r_ok:
            return PromptVerdict(prompt_id, True, i, i, f"near-tie at token {i}: {_show(r)} vs {_show(g)}")
        side = "stack's" if not g_ok else "reference's"
        context = "".join(ref.tokens[max(0, i - 8):i])
        return PromptVerdict(prompt_id, False, i, i,
                             f"token {i} differs after {context!r}: reference {_show(r)}, stack {_show(g)}; "
                             f"the {side} token is not in the other's top-{len(ref.top[i]) if i < len(ref.top) else 0}")
    return PromptVerdict(prompt_id, True, len(ref.tokens))


def judge(prompt_ids: list[str], refs: list[Generation], gots: list[Generation], eos: set[str]) -> Verdict:
    return Verdict([compare(pid, r, g, eos) for pid, r, g in zip(prompt_ids, refs, gots, strict=True)])
