"""OpenAI request validation (into typed dataclasses) and error bodies.

Validation is done by hand rather than by pydantic so that every error names its field and
reads like OpenAI's / vLLM's. Unknown fields are ignored. `server` names the serving stack in
messages about unsupported features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_TOP_LOGPROBS = 20
DEFAULT_COMPLETION_MAX_TOKENS = 16


class RequestError(Exception):
    """A client error, answered as OpenAI's error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.type = type_

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: int | str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass(frozen=True)
class StreamOptions:
    include_usage: bool = False
    continuous_usage_stats: bool = False


@dataclass(frozen=True)
class Common:
    """Fields shared by completions and chat. `max_tokens` None: up to the context length."""

    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    ignore_eos: bool
    top_logprobs: int | None  # None: logprobs off
    stream: bool
    stream_options: StreamOptions
    prediction: str | None = None  # predicted output text (OpenAI `prediction`); None: none given
    response_format: dict | None = None  # json_schema / json_object, shape checked; None: free text


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str | list[int]
    common: Common


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ChatRequest:
    messages: list[ChatMessage]
    common: Common


def parse_completion(body: Any, server: str = "this server") -> CompletionRequest:
    body = _require_object(body)
    if body.get("echo") not in (None, False):
        raise RequestError(f"echo is not supported by {server} (only echo=false)", "echo")
    logprobs = _opt_int(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    max_tokens = _opt_int(body, "max_tokens", 1, None)
    common = _parse_common(body, DEFAULT_COMPLETION_MAX_TOKENS if max_tokens is None else max_tokens, logprobs,
                           server)
    return CompletionRequest(_parse_prompt(body, server), common)


def parse_chat(body: Any, server: str = "this server") -> ChatRequest:
    body = _require_object(body)
    max_tokens = _opt_int(body, "max_completion_tokens", 1, None)
    if max_tokens is None:
        max_tokens = _opt_int(body, "max_tokens", 1, None)
    wants_logprobs = _opt_bool(body, "logprobs", False)
    top = _opt_int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None and top > 0 and not wants_logprobs:
        raise RequestError("top_logprobs requires logprobs to be true", "top_logprobs")
    common = _parse_common(body, max_tokens, (top or 0) if wants_logprobs else None, server)
    return ChatRequest(_parse_messages(body, server), common)


def _parse_common(body: dict, max_tokens: int | None, top_logprobs: int | None, server: str) -> Common:
    if _opt_int(body, "n", 1, None) not in (None, 1):
        raise RequestError(f"n must be 1: {server} generates one choice per request", "n")
    response_format = _parse_response_format(body.get("response_format"))
    stream = _opt_bool(body, "stream", False)
    return Common(
        max_tokens=max_tokens,
        temperature=_opt_float(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_top_p(body),
        seed=_opt_int(body, "seed", None, None),
        stop=_parse_stop(body.get("stop")),
        ignore_eos=_opt_bool(body, "ignore_eos", False),
        top_logprobs=top_logprobs,
        stream=stream,
        stream_options=_parse_stream_options(body.get("stream_options"), stream),
        prediction=_parse_prediction(body.get("prediction")),
        response_format=response_format,
    )


def _require_object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body


def _parse_prompt(body: dict, server: str) -> str | list[int]:
    if "prompt" not in body or body["prompt"] is None:
        raise RequestError("prompt is required", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of exactly one prompt
    if isinstance(prompt, str):
        if not prompt:
            raise RequestError("prompt must not be empty", "prompt")
        return prompt
    if isinstance(prompt, list) and all(_is_int(t) for t in prompt):
        if not prompt:
            raise RequestError("prompt must not be empty", "prompt")
        return list(prompt)
    raise RequestError(
        "prompt must be a string, a list of token ids, or a list holding exactly one of those "
        f"({server} serves one prompt per request)", "prompt")


def _parse_messages(body: dict, server: str) -> list[ChatMessage]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages")
    return [_parse_message(m, i, server) for i, m in enumerate(messages)]


# OpenAI's chat roles ("function" is its deprecated name for "tool"); a chat template renders
# whatever role it is given, so an unknown one would reach the model as text.
ROLES = ("system", "developer", "user", "assistant", "tool")


def _parse_message(message: Any, index: int, server: str) -> ChatMessage:
    param = f"messages[{index}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise RequestError(f"{param} must be an object with a string role", param)
    if message["role"] not in ROLES:
        raise RequestError(f"{param}.role must be one of {', '.join(ROLES)}, not {message['role'][:40]!r}",
                           f"{param}.role")
    return ChatMessage(message["role"], _message_text(message.get("content"), f"{param}.content", server))


def _message_text(content: Any, param: str, server: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise RequestError(f"{param}: only text content parts are supported by {server}", param)
            texts.append(part["text"])
        return "\n".join(texts)
    raise RequestError(f"{param} must be a string or a list of text parts", param)


def _parse_stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise RequestError("stop must be a string or a list of strings", "stop")
    return tuple(s for s in stop if s)


def _parse_stream_options(options: Any, stream: bool) -> StreamOptions:
    if options is None:
        return StreamOptions()
    if not stream:
        raise RequestError("stream_options is only allowed when stream is true", "stream_options")
    if not isinstance(options, dict):
        raise RequestError("stream_options must be an object", "stream_options")
    return StreamOptions(
        include_usage=_opt_bool(options, "include_usage", False, "stream_options."),
        continuous_usage_stats=_opt_bool(options, "continuous_usage_stats", False, "stream_options."),
    )


def _parse_prediction(prediction: Any) -> str | None:
    """OpenAI's predicted output: {"type": "content", "content": text or a list of text parts}."""
    if prediction is None:
        return None
    if not isinstance(prediction, dict):
        raise RequestError("prediction must be an object like {\"type\": \"content\", \"content\": \"...\"}",
                           "prediction")
    if prediction.get("type") != "content":
        raise RequestError(f"prediction.type must be 'content', got {prediction.get('type')!r}", "prediction.type")
    content = prediction.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise RequestError("prediction.content must be a string or a list of text parts", "prediction.content")


def _parse_response_format(fmt: Any) -> dict | None:
    """OpenAI's response_format, its shape checked (whether the schema compiles is the engine's
    to say): None for free text."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise RequestError("response_format json_schema needs json_schema.schema, an object", "response_format")
        return {"type": "json_schema", "json_schema": spec}
    raise RequestError("response_format must be an object with a type (text, json_object or json_schema)",
                       "response_format")


def _top_p(body: dict) -> float:
    top_p = _opt_float(body, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0.0:
        raise RequestError("top_p must be in (0, 1]", "top_p")
    return top_p


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _opt_int(body: dict, name: str, lo: int | None, hi: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise RequestError(f"{name} must be an integer, got {value!r}", name)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise RequestError(f"{name} must be {_range_text(lo, hi)}, got {value}", name)
    return value


def _opt_float(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise RequestError(f"{name} must be a number, got {value!r}", name)
    if not lo <= value <= hi:
        raise RequestError(f"{name} must be between {lo:g} and {hi:g}, got {value}", name)
    return float(value)


def _opt_bool(body: dict, name: str, default: bool, prefix: str = "") -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"{prefix}{name} must be a boolean, got {value!r}", prefix + name)
    return value


def _range_text(lo: int | None, hi: int | None) -> str:
    if hi is None:
        return f">= {lo}"
    return f"between {lo} and {hi}"
