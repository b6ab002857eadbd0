"""Prompt token ids for a request, and the context-length check."""

from __future__ import annotations

from .protocol import ChatMessage, RequestError


def completion_prompt_ids(tokenizer, prompt: str | list[int], vocab_size: int) -> list[int]:
    if isinstance(prompt, str):
        ids = list(tokenizer(prompt).input_ids)  # special tokens added as the tokenizer says, as vLLM does
    else:
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise RequestError(f"prompt token ids must be in [0, {vocab_size}), got {bad[:5]}", "prompt")
        ids = list(prompt)
    if not ids:
        raise RequestError("prompt must not be empty (it has no tokens)", "prompt")
    return ids


def chat_prompt_ids(tokenizer, messages: list[ChatMessage]) -> list[int]:
    conversation = [{"role": m.role, "content": m.content} for m in messages]
    try:
        ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                            return_dict=False)
    except Exception as exc:  # a template may reject a conversation (roles out of order, ...)
        raise RequestError(f"the chat template rejected these messages: {exc}", "messages") from exc
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def prediction_ids(tokenizer, prediction: str | None) -> tuple[int, ...] | None:
    """The predicted output as token ids: the same tokenizer, no special tokens (it stands for
    generated text, not a prompt). None or empty: no prediction."""
    if not prediction:
        return None
    ids = tokenizer(prediction, add_special_tokens=False).input_ids
    return tuple(int(t) for t in ids) or None


def resolve_max_tokens(prompt_len: int, max_tokens: int | None, max_model_len: int) -> int:
    """The number of tokens to generate; rejects requests that do not fit the context."""
    if max_tokens is None:
        if prompt_len >= max_model_len:
            raise RequestError(
                f"This model's maximum context length is {max_model_len} tokens. However, your prompt has "
                f"{prompt_len} tokens, which leaves no room for the completion.", "messages")
        return max_model_len - prompt_len
    if prompt_len + max_tokens > max_model_len:
        raise RequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the completion). "
            "Please reduce the length of the prompt or max_tokens.", "max_tokens")
    return max_tokens
