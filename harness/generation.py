"""A generated sequence as the oracles compare it: token strings, top-k alternatives, why it ended."""
from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Prompt:
    """One accuracy prompt: plain text for /v1/completions, or one user turn for /v1/chat/completions.

    `extra`: request fields that switch on a lossless optimisation (such as OpenAI's predicted
    outputs); they must not change the output, so the reference never sees them. `template_kwargs`:
    chat-template arguments (e.g. {"enable_thinking": false}), sent as `chat_template_kwargs` and
    given to the reference's template too.
    """

    id: str
    text: str
    chat: bool
    max_tokens: int
    extra: dict = field(default_factory=dict, compare=False)
    template_kwargs: dict = field(default_factory=dict, compare=False)
    ignore_eos: bool = False  # generate max_tokens whatever comes (a load point's fixed output length)
    ids: tuple[int, ...] | None = None  # the prompt as token ids (sent as a list, as-is); `text` is then a label
    # OpenAI's response_format (json_schema, json_object): part of the request, so the reference
    # decodes under it too (harness/grammar.py), unlike `extra`
    response_format: dict | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.ids is not None and self.chat:
            raise ValueError(f"prompt {self.id}: token-id prompts go to /v1/completions, not chat")

    def reference_key(self) -> dict:
        """What the reference's output depends on (keys absent at their defaults, so older cache keys hold)."""
        key = {"id": self.id, "text": self.text, "chat": self.chat, "max_tokens": self.max_tokens}
        return (key | ({"template_kwargs": self.template_kwargs} if self.template_kwargs else {})
                | ({"ignore_eos": True} if self.ignore_eos else {}) | ({"ids": list(self.ids)} if self.ids else {})
                # as a string: the cache key's JSON sorts keys, and a schema's property order is its grammar's
                | ({"response_format": json.dumps(self.response_format)} if self.response_format else {}))

    def without_extra(self) -> "Prompt":
        return Prompt(self.id, self.text, self.chat, self.max_tokens, {}, self.template_kwargs, self.ignore_eos, self.ids,
                      self.response_format)


INCOMPLETE = "\ufffd"  # what a tokenizer prints for bytes that do not yet make a whole UTF-8 character


@dataclass
class Generation:
    """Greedy output for one prompt.

    `top[i]` maps the top-k token strings at step i to their logprobs. When the sequence ended on
    an end-of-sequence token, `top` has one more entry than `tokens`: the step that chose it.
    Token strings are the tokenizer's decoding of each single id, special tokens kept (as vLLM
    reports them), so stacks are compared without sharing token ids.
    """

    tokens: list[str]
    top: list[dict[str, float]] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (end of sequence or stop string) | "length"
    text: str = ""
    usage_tokens: int | None = None  # what the server's usage said, when it came from a server
    usage_details: dict = field(default_factory=dict)  # usage's prompt_ and completion_tokens_details, when given
    # Where each token's text ends in `text` (the reference's; empty where unknown). A token that is
    # a few bytes of a multi-byte character decodes alone to U+FFFD, so `tokens` alone cannot place
    # the characters of an emoji or of CJK text.
    ends: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"tokens": self.tokens, "top": self.top, "finish_reason": self.finish_reason,
                "text": self.text, "usage_tokens": self.usage_tokens, "usage_details": self.usage_details,
                "ends": self.ends}

    @classmethod
    def from_json(cls, data: dict) -> "Generation":
        return cls(**data)


def usage_details(usage: dict) -> dict:
    """The counts in usage's prompt_tokens_details and completion_tokens_details, in one mapping."""
    return {**(usage.get("prompt_tokens_details") or {}), **(usage.get("completion_tokens_details") or {})}


def from_openai(response: dict, chat: bool) -> Generation:
    """Read a non-streaming completions / chat completions response that asked for logprobs."""
    choice = response["choices"][0]
    usage = (response.get("usage") or {}).get("completion_tokens")
    details = usage_details(response.get("usage") or {})
    logprobs = choice.get("logprobs") or {}
    if chat:
        entries = logprobs.get("content") or []
        tokens = [e["token"] for e in entries]
        top = [{t["token"]: t["logprob"] for t in e.get("top_logprobs") or []} for e in entries]
        text = choice["message"].get("content") or ""
    else:
        tokens = list(logprobs.get("tokens") or [])
        top = [dict(t or {}) for t in logprobs.get("top_logprobs") or []]
        text = choice.get("text") or ""
    return Generation(tokens=tokens, top=top, finish_reason=choice.get("finish_reason"), text=text,
                      usage_tokens=usage, usage_details=dict(details) if isinstance(details, dict) else {})
