"""Cross-implementation accuracy: greedy token match, with a near-tie allowed at the first divergence.

Tokens must be equal until the first position where they differ. There, each side's token must
be among the other side's top-k alternatives (vLLM's `check_logprobs_close` rule); after an
accepted near-tie the sequences are free to differ, so the token match of that prompt stops (and
the reference reads the stack's output on: harness/continuation.py).
Ending is a token too: a side that stopped on end-of-sequence where the other went on must
have had end-of-sequence among the other side's alternatives, and vice versa.

Lossless optimisations (`judge_lossless`): the same stack with the optimisation on and off must
give the same tokens, strictly, to the end. No near-tie is excused there, but an engine that
verifies several draft tokens in one forward pass multiplies with a different blocking than
one-token decoding, so it can flip a float near-tie; the verdict therefore carries, at a
divergence, both sides' top-k logprobs and the gap between the two tokens, so a person can tell
a near-tie from a real bug.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from harness.generation import INCOMPLETE, Generation

END = "<end-of-sequence>"  # stands for whatever string the model's EOS token decodes to


@dataclass
class PromptVerdict:
    prompt_id: str
    ok: bool
    matched: int  # tokens equal before the first divergence (or in total)
    diverged_at: int | None = None
    reason: str = ""
    detail: dict | None = None  # at a divergence: both sides' top-k there, for a person to read


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


@dataclass
class AllOf(Verdict):
    """Several judgements of the same outputs, all of which must pass (e.g. the near-tie rule
    against the reference and a setting's own judge); `prompts` holds every part's."""

    parts: dict[str, Verdict] = field(default_factory=dict)

    @classmethod
    def of(cls, parts: dict[str, Verdict]) -> "AllOf":
        return cls([p for v in parts.values() for p in v.prompts], parts)

    @property
    def ok(self) -> bool:
        return bool(self.parts) and all(v.ok for v in self.parts.values())

    @property
    def summary(self) -> str:
        return "; ".join(f"{name}: {v.summary}" for name, v in self.parts.items())

    def to_json(self) -> dict:
        return {"verdict": "pass" if self.ok else "fail", "summary": self.summary,
                "parts": {name: v.to_json() for name, v in self.parts.items()}}


def _token_at(gen: Generation, i: int) -> str | None:
    """The token at i, END if the sequence stopped on end-of-sequence there, None if cut by length."""
    if i < len(gen.tokens):
        return gen.tokens[i]
    return END if gen.finish_reason == "stop" else None


def _alternatives(gen: Generation, i: int, eos: set[str], unprinted_may_end: bool = False) -> set[str]:
    """The top-k at step i, END among them where an end-of-sequence token is. `unprinted_may_end`
    (a stack's side): a token that prints nothing counts as one, since some servers render special
    tokens empty in their logprobs (llama-cpp-python: '' where <|im_end|> is), and a byte-level
    token that is not special always prints something."""
    if i >= len(gen.top):
        return set()
    alts = set(gen.top[i])
    return alts | {END} if alts & eos or (unprinted_may_end and "" in alts) else alts


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
        r_ok = r in _alternatives(got, i, eos, unprinted_may_end=True) or (i >= len(got.top) and g == END)
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


def _top_text(top: dict[str, float]) -> str:
    return "{" + ", ".join(f"{t!r}: {lp:.3f}" for t, lp in sorted(top.items(), key=lambda kv: -kv[1])) + "}"


def compare_exact(prompt_id: str, base: Generation, got: Generation, eos: set[str],
                  names: tuple[str, str] = ("off", "on")) -> PromptVerdict:
    """Strict token equality of `got` (optimisation on) with `base` (off), ending included."""
    base, got = _without_trailing_eos(base, eos), _without_trailing_eos(got, eos)
    for side, gen in zip(names, (base, got)):
        problem = _structure_problem(gen)
        if problem:
            return PromptVerdict(prompt_id, False, 0, 0, f"{side}: {problem}")
    for i in range(max(len(base.tokens), len(got.tokens)) + 1):
        b, g = _token_at(base, i), _token_at(got, i)
        if b == g:
            if b is None or b == END:
                return PromptVerdict(prompt_id, True, i)
            continue
        tops = {names[0]: base.top[i] if i < len(base.top) else {}, names[1]: got.top[i] if i < len(got.top) else {}}
        b_top, g_top = tops[names[0]], tops[names[1]]
        gap = (b_top[b] - b_top[g]) if b in b_top and g in b_top else None
        near = (g in _alternatives(base, i, eos) or g is None) and (b in _alternatives(got, i, eos) or b is None)
        context = "".join(base.tokens[max(0, i - 8):i])
        reason = (f"token {i} differs after {context!r}: {names[0]} {_show(b)}, {names[1]} {_show(g)}; "
                  f"top-{len(b_top)} {names[0]} {_top_text(b_top)}, {names[1]} {_top_text(g_top)}"
                  + (f"; logprob gap {gap:.4f}" if gap is not None else "")
                  + ("; each token is in the other's top-k (a near-tie?)" if near else ""))
        detail = {"index": i, names[0]: _show(b), names[1]: _show(g), f"top_{names[0]}": b_top,
                  f"top_{names[1]}": g_top, "logprob_gap": gap, "in_each_others_top_k": near}
        return PromptVerdict(prompt_id, False, i, i, reason, detail)
    return PromptVerdict(prompt_id, True, len(base.tokens))


def judge_lossless(prompt_ids: list[str], bases: list[Generation], gots: list[Generation], eos: set[str],
                   names: tuple[str, str] = ("off", "on")) -> Verdict:
    """Every prompt's output with the optimisation on equals its output with it off."""
    return Verdict([compare_exact(pid, b, g, eos, names) for pid, b, g in zip(prompt_ids, bases, gots, strict=True)])


def compare_text(prompt_id: str, ref: Generation, text: str, silent: frozenset[str], eos: set[str],
                 usage_tokens: int | None = None, may_end: bool = True, max_gap: float | None = None) -> PromptVerdict:
    """A streamed output known by its text only (a load point's request: no logprobs asked, no
    extra request made) against the reference's tokens, by the near-tie rule seen from the
    reference's side: the text spells the reference's output until its end, or until a token where
    it goes on with one of the reference's top-k alternatives there (after which the two may
    differ); an alternative a token or two before the divergence that is a longer cut of the
    reference's token, or a shorter cut of a run of whitespace, counts too, since the texts then part
    only later. Special tokens (`silent`) are compared both ways: left out of both texts (most
    servers do not print them), and, where the stack printed some, kept in both. Where the text is
    the reference's to the end, `usage_tokens` must count the reference's tokens (one more where
    the stack counts the end-of-sequence token it stopped on). `may_end` False (a request with
    `ignore_eos`): ending before max_tokens is never a near-tie. `max_gap`: a near-tie's alternative
    must also be within this many nats of the reference's own token (None: any of the top-k, the
    rule above; a setting whose transcripts of nearby inputs share their likely tokens needs it,
    or a neighbour's output would pass as a near-tie)."""
    hidden = [t if t not in silent else "" for t in ref.tokens]
    full, shown = ref.text, text
    for token in silent:
        full, shown = full.replace(token, ""), shown.replace(token, "")
    if len(ref.ends) == len(ref.tokens) and full == ref.text:  # where each token's characters are known
        hidden = [full[a:b] for a, b in zip([0, *ref.ends], ref.ends)]
    verdict = _walk(prompt_id, ref, hidden, full, shown, silent, eos, usage_tokens, may_end, unseen=shown == text,
                    max_gap=max_gap)
    if not verdict.ok and shown != text:  # the stack printed special tokens: compare them too
        printed = _walk(prompt_id, ref, list(ref.tokens), "".join(ref.tokens), text, frozenset(), eos, usage_tokens,
                        may_end, max_gap=max_gap)
        return printed if printed.ok else verdict
    return verdict


def _walk(prompt_id: str, ref: Generation, pieces: list[str], full: str, text: str, silent: frozenset[str],
          eos: set[str], usage_tokens: int | None, may_end: bool, unseen: bool = False,
          max_gap: float | None = None) -> PromptVerdict:
    """compare_text on one rendering: `pieces[i]` is how reference token i shows in `full`. `unseen`:
    the stack prints no special tokens, so it may have taken one a little before the divergence."""
    same = _common_prefix(full, text)
    n = len(ref.tokens)
    if same == len(full) == len(text) or full.rstrip(INCOMPLETE) == text.rstrip(INCOMPLETE):
        # (a stream may hold back, or print as U+FFFD, the bytes of a character cut by max_tokens)
        allowed = {n, n + 1} if ref.finish_reason == "stop" else {n}
        if usage_tokens is not None and usage_tokens not in allowed:
            splits = _resplits(ref)
            if splits and min(abs(usage_tokens - a) for a in allowed) <= splits:
                return PromptVerdict(prompt_id, True, n, None, f"usage says {usage_tokens} tokens for the reference's "
                                                               f"text of {n}: within the {splits} near-tied steps "
                                                               f"where it could be cut otherwise")
            return PromptVerdict(prompt_id, False, n, None, f"usage says {usage_tokens} tokens; the text is the "
                                                            f"reference's {n} tokens")
        return PromptVerdict(prompt_id, True, n)
    starts = [0]  # where each token's text starts
    for piece in pieces:
        starts.append(starts[-1] + len(piece))
    i = 0  # the token holding character `same`
    while i < n and starts[i + 1] <= same:
        i += 1
    start, rest = starts[i], text[starts[i]:]
    for j in _deciding(ref, i) if same == start else [i]:
        alternatives, after = _runners_up(ref, j, eos, max_gap), text[starts[j]:]
        if may_end and any(a in eos for a in alternatives) and not after:
            return PromptVerdict(prompt_id, True, j, j, f"near-tie at token {j}: the stack ended, the reference went on")
        if any(a and a not in silent and _spells(after, a) for a in alternatives):
            return PromptVerdict(prompt_id, True, j, j, f"near-tie at token {j}")
    longer = _longer_runner_up(ref, starts, i, same, text, silent, eos, max_gap)
    if longer is not None:
        return PromptVerdict(prompt_id, True, longer, longer, f"near-tie at token {longer}: the stack took a longer "
                                                              "runner-up there, which the reference's next token began")
    shorter = _shorter_runner_up(ref, pieces, i, silent, eos, max_gap)
    if shorter is not None:
        return PromptVerdict(prompt_id, True, shorter, shorter, f"near-tie at token {shorter}: the reference's "
                                                                "runner-up there is a shorter cut of its run of "
                                                                "whitespace, which the stack's text spells too")
    alternatives = _runners_up(ref, i, eos, max_gap)
    unprinted = [a for a in alternatives if a in silent]
    # The stack may have taken it there, which its text cannot show; with nothing after it, only
    # where it may end, or as its last token of a full count (ignore_eos past max_tokens - 1).
    last = i == n - 1 and usage_tokens in (None, n)
    if unprinted and (rest or may_end or last):
        return PromptVerdict(prompt_id, True, i, i, f"near-tie at token {i}: the reference's runner-up "
                                                    f"{unprinted[0]!r} leaves no text")
    hidden = _hidden_runner_up(ref, i, silent) if unseen else None
    if hidden is not None:
        return PromptVerdict(prompt_id, True, hidden, hidden, f"near-tie at token {hidden}: the reference's runner-up "
                                                              f"{_first_silent(ref.top[hidden], silent)!r} "
                                                              f"leaves no text, and the next {i - hidden} token(s) "
                                                              f"print alike")
    expected = _show(ref.tokens[i]) if i < n else "the end"
    got = repr(rest[:24]) if rest else "the end of the text"
    return PromptVerdict(prompt_id, False, i, i, f"text differs at token {i} of {n}, after {full[max(0, start - 40):start]!r}: "
                                                 f"reference {expected}, stack {got}; not in the reference's top-"
                                                 f"{len(ref.top[i]) if i < len(ref.top) else 0}"
                                                 + _trimmed(full, text, starts))


def _common_prefix(a: str, b: str) -> int:
    """How many characters `a` and `b` share at their start."""
    same = 0
    for x, y in zip(a, b):
        if x != y:
            break
        same += 1
    return same


def _trimmed(full: str, text: str, starts: list[int]) -> str:
    """Where the text is the reference's less its opening space: said, since the cause is then a
    streaming detokenizer trimming the first token's space (right for a chat turn's first word,
    wrong for a completion, which must continue its prompt as the tokenizer decodes it), not the
    model. It still fails: a client appending the completion to its prompt gets the words joined."""
    if not (full.startswith(" ") and text and not text.startswith(" ")):
        return ""
    same = _common_prefix(full[1:], text)
    tokens = sum(1 for end in starts[1:] if end <= same + 1)
    if same < len(text) and tokens < 2:
        return ""
    return (f"; the text is the reference's without its opening space for {tokens} of {len(starts) - 1} tokens"
            " (a detokenizer that trims the first token's leading space)")


def _resplits(ref: Generation) -> int:
    """Steps where the reference's runner-up is a shorter or longer cut of the same text (" {" for
    " {\"", or the reverse): a stack that took it at a near-tie spells the same text in another
    number of tokens (seen under a JSON grammar, which allows both cuts). Each such step may move
    the count by one; the text itself is still judged in full."""
    count = 0
    for token, top in zip(ref.tokens, ref.top):
        if any(a != token and a and (token.startswith(a) or a.startswith(token)) for a in top):
            count += 1
    return count


def _runners_up(ref: Generation, i: int, eos: set[str], max_gap: float | None) -> list[str]:
    """The reference's top-k at token i other than its own choice (within max_gap of the best)."""
    own = {ref.tokens[i]} if i < len(ref.tokens) else (set(eos) if ref.finish_reason == "stop" else set())
    top = ref.top[i] if i < len(ref.top) else {}
    best = max(top.values(), default=0.0)
    return [a for a in top if a not in own and (max_gap is None or best - top[a] <= max_gap)]


def _deciding(ref: Generation, i: int) -> list[int]:
    """The tokens where the first character of token i's text was chosen, for a divergence there:
    token i, and those just before it that end in that character's first bytes (printed alone,
    those end in U+FFFD)."""
    chosen = [i]
    while chosen[-1] > 0 and ref.tokens[chosen[-1] - 1].endswith(INCOMPLETE):
        chosen.append(chosen[-1] - 1)
    return chosen


def _longer_runner_up(ref: Generation, starts: list[int], i: int, same: int, text: str, silent: frozenset[str],
                      eos: set[str], max_gap: float | None) -> int | None:
    """The token just before the divergence (or the one before that) where the stack took one of the
    reference's alternatives that reaches past the common text: the reference wrote ' condition' then
    ' of', the stack ' conditions' (a runner-up there), so the texts part only at the next token."""
    for j in range(i - 1, max(i - 1 - LONGER_LOOKBACK, -1), -1):
        after = text[starts[j]:]
        if any(a and a not in silent and len(a) > same - starts[j] and _spells(after, a)
               for a in _runners_up(ref, j, eos, max_gap)):
            return j
    return None


def _shorter_runner_up(ref: Generation, pieces: list[str], i: int, silent: frozenset[str], eos: set[str],
                       max_gap: float | None) -> int | None:
    """The token just before the divergence (or the one before that), a run of whitespace, whose
    runner-up is a shorter cut of that run: the reference wrote "\\n\\n" then "1", the stack "\\n" (0.04
    nats behind) then "\\n" and "-". The texts agree through the run, so they part only a token later,
    where the stack's context already differed from the reference's. Only whitespace: a cut of any
    other token ('{"' taken as '{' then '"') would excuse nearly every divergence of a JSON value,
    which a valid answer to another request then passes."""
    for j in range(i - 1, max(i - 1 - LONGER_LOOKBACK, -1), -1):
        piece = pieces[j]
        if piece.isspace() and any(a and a not in silent and len(a) < len(piece) and piece.startswith(a)
                                   for a in _runners_up(ref, j, eos, max_gap)):
            return j
    return None


# How many tokens before a divergence a longer (or shorter) runner-up may have been taken (one token of
# the stack's spans at most this many of the reference's, in the cases seen).
LONGER_LOOKBACK = 2


def _spells(rest: str, token: str) -> bool:
    """Whether the text goes on with this token. A token of a few bytes of a multi-byte character
    (printed alone as U+FFFD) is taken to spell any such character: its bytes are not kept."""
    if INCOMPLETE not in token:
        return rest.startswith(token)
    head = token[:token.index(INCOMPLETE)]
    return rest.startswith(head) and len(rest) > len(head) and not rest[len(head)].isascii()


# How far before a visible divergence a special token the stack took unseen may lie: after an
# unprinted <|im_end|> a model's next token (a newline) often prints what the reference's did.
HIDDEN_LOOKBACK = 2


def _first_silent(top: dict[str, float], silent: frozenset[str]) -> str | None:
    return next((a for a in top if a in silent), None)


def _hidden_runner_up(ref: Generation, i: int, silent: frozenset[str]) -> int | None:
    """The latest token j in the few before i where the reference's top-k held a special token other
    than its own choice: the stack may have taken it there unseen, then printed text that coincides
    with the reference's up to token i. None where there is none."""
    for j in range(i - 1, max(i - HIDDEN_LOOKBACK, 0) - 1, -1):
        top = ref.top[j] if j < len(ref.top) else {}
        if any(a in silent and a != (ref.tokens[j] if j < len(ref.tokens) else None) for a in top):
            return j
    return None


def judge_texts(prompts: list, refs: list[Generation], texts: list[str], silent: frozenset[str],
                eos: set[str], usage: list[int | None], stops_at_eos: bool = False) -> Verdict:
    """Each measured text against its prompt's reference (prompts: harness.generation.Prompt).
    `stops_at_eos`: the stack's spec says it cannot ignore end-of-sequence, so where a request asked
    it to, its text is judged against the reference cut at the reference's first end-of-sequence
    (which the model chose there: stopping is then right) as a request without ignore_eos is."""
    out = []
    for p, r, t, u in zip(prompts, refs, texts, usage, strict=True):
        whole = compare_text(p.id, r, t, silent, eos, u, may_end=not p.ignore_eos)
        cut = until_eos(r, eos, silent) if p.ignore_eos and stops_at_eos and not whole.ok else None
        if cut is None:
            out.append(whole)
            continue
        verdict = compare_text(p.id, cut, t, silent, eos, u, may_end=True)
        note = (f"the reference chose end-of-sequence at token {len(cut.tokens)} of {len(r.tokens)}, where this "
                "stack, unable to ignore it, stops")
        out.append(replace(verdict, reason=f"{verdict.reason}; {note}" if verdict.reason else note))
    return Verdict(out)


def until_eos(ref: Generation, eos: set[str], silent: frozenset[str]) -> Generation | None:
    """The reference generated past its end-of-sequence (a request with ignore_eos) cut where it first
    chose one, as it would have stopped without ignore_eos; None where it chose none."""
    j = next((i for i, token in enumerate(ref.tokens) if token in eos), None)
    if j is None:
        return None
    exact = len(ref.ends) == len(ref.tokens)
    text = (ref.text[:ref.ends[j - 1]] if j else "") if exact else "".join(t for t in ref.tokens[:j] if t not in silent)
    return Generation(tokens=ref.tokens[:j], top=ref.top[:j + 1], finish_reason="stop", text=text,
                      ends=ref.ends[:j] if exact else [])


def _shown(value) -> str:
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    return repr(value)[:80]


def judge_equal(prompt_ids: list[str], expected: list, got: list) -> Verdict:
    """The lossless-pair judge for outputs that are not token streams (a transcript, an image's
    bytes): each output equal, strictly, to the other side's (the optimisation off, or a
    reference). A missing output (None: the request failed) is never equal."""
    out = []
    for pid, want, have in zip(prompt_ids, expected, got, strict=True):
        ok = have is not None and have == want
        out.append(PromptVerdict(pid, ok, int(ok), None if ok else 0,
                                 "" if ok else f"expected {_shown(want)}, got {_shown(have)}"))
    return Verdict(out)
