"""What can be checked of sampled outputs, which no reference can equal token for token.

For `sample` measured requests drawn after the cell (as the greedy check draws them):
- in the nucleus: the reference model, fed the prompt and the stack's output, finds each output
  token inside the top-p nucleus of its temperature-scaled distribution (top-p widened by
  `NUCLEUS_SLACK`, and up to `MISS_SHARE` of the tokens outside it: re-tokenising text can split it
  otherwise than the stack did, and a low-precision stack moves tokens near the edge; special tokens
  sampled past EOS, which a text leaves out, are put back where the reference would sample them);
  a stack that returns junk, or samples at the wrong temperature, lands far outside;
- repeatable: the same request (its seed included) sent alone twice gives the same text both
  times. How many of those equal the measured text is shown, not judged: a stack whose logits move
  with the batch they were computed in (bf16 matmuls blocked by row count: vLLM's, engine-a's past
  a few rows) can flip a draw when a logit moves, so a sample under load need not be the sample
  alone;
- sampled at all: the same request with another seed gives another text for at least one of them
  (a stack that decodes greedily whatever it is asked gives the same text every time).
Token counts are the scenario's own check (max_tokens with EOS ignored).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from harness.generation import Prompt
from harness.oracle import PromptVerdict, Verdict
from harness.records import RequestRecord

NUCLEUS_SLACK = 0.05
MISS_SHARE = 0.10
PUT_BACK_REACH = 2      # tokens before a miss where a left-out special token may have been
PUT_BACK_DEPTH = 2      # special tokens put back for one miss (EOS, then a turn's start)
PUT_BACK_PASSES = 48    # forward passes one text may spend looking
_DRAW = random.SystemRandom()


@dataclass(frozen=True)
class SampledCheck:
    """`prompts[i]` and `payloads[i]`: measured request i as the reference reads it and as it was sent."""

    prompts: list[Prompt]
    payloads: list[dict]
    endpoint: str
    timeout_s: float
    sample: int = 4

    def judge(self, bench, records: list[RequestRecord], cell: str):
        from harness.bench import OutputsVerdict

        done = [i for i, r in enumerate(records) if r.ok]
        drawn = sorted(_DRAW.sample(done, min(self.sample, len(done))))
        if not drawn:
            return OutputsVerdict(Verdict(), [], len(records))
        sent = [self.payloads[i] for i in drawn]
        once, twice = (bench.collect(self.endpoint, sent, self.timeout_s) for _ in range(2))
        other = bench.collect(self.endpoint, [_reseeded(p) for p in sent], self.timeout_s)
        measured = [records[i] for i in drawn]
        verdicts = [self._judge_one(bench.model_dir, self.prompts[i], self.payloads[i], records[i].text)
                    for i in drawn]
        verdict = Verdict(verdicts + [_repeatable(measured, once, twice), _varies(measured, other)])
        return OutputsVerdict(verdict, drawn, len(records))

    def _judge_one(self, model_dir: Path, prompt: Prompt, payload: dict, text: str) -> PromptVerdict:
        temperature, top_p = payload.get("temperature", 1.0), payload.get("top_p", 1.0)
        misses, tokens = nucleus_misses(model_dir, prompt, text, temperature, min(1.0, top_p + NUCLEUS_SLACK))
        ok = tokens > 0 and misses <= MISS_SHARE * tokens
        reason = "" if ok else (f"{misses} of {tokens} output tokens lie outside the reference's top-p "
                                f"{top_p} nucleus at temperature {temperature}" if tokens else "empty output")
        return PromptVerdict(prompt.id, ok, tokens - misses, reason=reason,
                             detail={"tokens": tokens, "outside_nucleus": misses})


def _reseeded(payload: dict) -> dict:
    return {**payload, "seed": (payload.get("seed") or 0) + 7919}


def _repeatable(measured: list[RequestRecord], once: list[RequestRecord], twice: list[RequestRecord]) -> PromptVerdict:
    same = sum(1 for a, b in zip(once, twice) if a.ok and b.ok and a.text == b.text)
    as_measured = sum(1 for a, b in zip(measured, once) if b.ok and a.text == b.text)
    ok = same == len(measured)
    return PromptVerdict("seeded replay", ok, same,
                         reason="" if ok else f"{len(measured) - same} of {len(measured)} seeded requests sent alone "
                                              "twice gave two texts",
                         detail={"alone_twice_identical": same, "alone_equals_measured": as_measured,
                                 "sent": len(measured)})


def _varies(measured: list[RequestRecord], other: list[RequestRecord]) -> PromptVerdict:
    differ = sum(1 for a, b in zip(measured, other) if b.ok and a.text != b.text)
    ok = differ > 0
    return PromptVerdict("another seed", ok, differ,
                         reason="" if ok else f"all {len(measured)} requests gave the same text with another seed: "
                                              "the stack does not sample", detail={"differ": differ, "sent": len(measured)})


def nucleus_misses(model_dir: Path, prompt: Prompt, text: str, temperature: float, top_p: float,
                   top_k: int | None = None) -> tuple[int, int]:
    """(tokens of `text` outside the reference's top-p nucleus after the prompt, tokens of `text`),
    `text` tokenised on its own and appended to the prompt's ids; `top_k`: the nucleus holds at most
    that many tokens (with top_p 1.0, the reference's top-k).

    A stack run past EOS (ignore_eos) samples special tokens (EOS, chat-turn markers) that its text
    leaves out, so the tokens after one are read in a context the stack did not have. Where a token
    misses, special tokens the reference would have sampled there are put back at most
    `PUT_BACK_REACH` tokens before it, if that brings it and the tokens between into the nucleus."""
    from harness.reference import reference_model, input_ids

    tok, model = reference_model(model_dir)
    head = input_ids(tok, prompt)
    tail = tok(text, add_special_tokens=False)["input_ids"]
    if not tail:
        return 0, 0
    reading = _Reading(model, head, temperature, top_p, sorted(set(tok.all_special_ids)), top_k)
    seq, own = list(tail), [True] * len(tail)
    nucleus = reading.nucleus(seq)
    misses = i = 0
    while i < len(seq):
        if own[i] and not nucleus[i, seq[i]]:
            failed = misses > MISS_SHARE * len(tail)  # fails whatever is put back: count, stop looking
            found = None if failed else reading.put_back(seq, own, nucleus, i, PUT_BACK_DEPTH)
            if found is None:
                misses += 1
            else:
                seq, own, nucleus, i = found
        i += 1
    return misses, len(tail)


@dataclass
class _Reading:
    """The reference reading one output: its nucleus at every position, and the search for special
    tokens the output's text left out."""

    model: object
    head: list[int]
    temperature: float
    top_p: float
    specials: list[int]
    top_k: int | None = None
    passes: int = 0

    def nucleus(self, seq: list[int]):
        """[len(seq), vocabulary] bool: token v is inside the nucleus at position i (after seq[:i])."""
        import torch

        self.passes += 1
        with torch.inference_mode():
            logits = self.model(torch.tensor([self.head + seq])).logits[0, len(self.head) - 1: -1].float()
        probs = torch.softmax(logits / max(self.temperature, 1e-6), dim=-1)
        values, order = probs.sort(dim=-1, descending=True)
        inside = (values.cumsum(dim=-1) - values) < self.top_p
        if self.top_k is not None:
            inside[:, self.top_k:] = False
        return torch.zeros_like(inside).scatter_(1, order, inside)

    def put_back(self, seq: list[int], own: list[bool], nucleus, miss: int, depth: int, low: int | None = None):
        """(seq, own, nucleus, index of the missed token) with special tokens put back before `miss`
        that bring it and every own token after the first of them into the nucleus; None where none do."""
        for at in range(miss, max(miss - PUT_BACK_REACH, 0) - 1, -1):
            if not own[at]:
                break  # only after a special token already put back
            for special in self.specials:
                if not nucleus[at, special] or self.passes >= PUT_BACK_PASSES:
                    continue
                seq2, own2 = seq[:at] + [special] + seq[at:], own[:at] + [False] + own[at:]
                nucleus2 = self.nucleus(seq2)
                first = at if low is None else low
                if all(nucleus2[j, seq2[j]] for j in range(first + 1, miss + 2) if own2[j]):
                    return seq2, own2, nucleus2, miss + 1
                if depth > 1 and (deeper := self.put_back(seq2, own2, nucleus2, miss + 1, depth - 1, first)):
                    return deeper
        return None
