"""`POST /v1/images/generations`, as OpenAI's images API with the fields a diffusion server adds:
what a request may say, checked before any work, each refusal one line naming its field."""
from __future__ import annotations

import json
from dataclasses import dataclass

ROUTE = "/v1/images/generations"
MAX_PROMPT_CHARS = 4000
MAX_STEPS = 200
MAX_GUIDANCE = 50.0
MAX_SEED = 2**63 - 1


class RequestError(ValueError):
    def __init__(self, message: str, param: str | None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class GenerationParams:
    prompt: str
    seed: int | None  # None: the server draws one
    steps: int
    guidance: float


def _integer(body: dict, key: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:  # absent or null: the default, as OpenAI's API reads a null field
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{key}: an integer is required, got {type(value).__name__}", key)
    if not low <= value <= high:
        raise RequestError(f"{key}: must be between {low} and {high}, got {value}", key)
    return value


def _size(body: dict, image_size: int) -> None:
    """The model draws one size: `size` ("WxH") or `width`/`height` may name it, nothing else."""
    want = f"{image_size}x{image_size}"
    size = body.get("size")
    if size is not None and size != want:
        raise RequestError(f"size: this model draws {want} only, got {str(size)[:40]!r}", "size")
    for key in ("width", "height"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or value != image_size):
            raise RequestError(f"{key}: this model draws {want} only, got {str(value)[:40]!r}", key)


def read_json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError as exc:  # not JSON, or not UTF-8
        raise RequestError(f"the body is not JSON: {exc}", None) from exc
    except RecursionError as exc:  # json's decoder recurses once per level of nesting
        raise RequestError("the body is nested too deeply to read", None) from exc


def parse(body: object, image_size: int) -> GenerationParams:
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object", None)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("prompt: a non-empty string is required", "prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise RequestError(f"prompt: at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}", "prompt")
    n = body.get("n")
    if n is not None and (n != 1 or isinstance(n, bool)):
        raise RequestError(f"n: this server draws one image per request, got {str(n)[:20]}", "n")
    if body.get("response_format") not in (None, "b64_json"):
        raise RequestError(f"response_format: only b64_json is served, got {str(body.get('response_format'))[:40]!r}",
                           "response_format")
    _size(body, image_size)
    guidance = 5.0 if body.get("guidance_scale") is None else body["guidance_scale"]
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 1.0 <= guidance <= MAX_GUIDANCE:
        raise RequestError(f"guidance_scale: a number from 1 to {MAX_GUIDANCE:g} is required, got "
                           f"{str(guidance)[:40]}", "guidance_scale")
    return GenerationParams(prompt=prompt, seed=_integer(body, "seed", None, 0, MAX_SEED),
                            steps=_integer(body, "num_inference_steps", 20, 1, MAX_STEPS), guidance=float(guidance))
