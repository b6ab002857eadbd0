"""Planner and implementer on any OpenAI-compatible chat endpoint, through the `openai` package.

Configuration: --openai-base-url / AGENT_OPENAI_BASE_URL, --openai-model / AGENT_OPENAI_MODEL,
OPENAI_API_KEY; optional prices per million tokens for the cost column
(AGENT_OPENAI_PRICE_IN, AGENT_OPENAI_PRICE_OUT).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from agent.backends import prompts
from agent.backends.base import BackendError, ImplementContext, Implemented, PlanContext, Planned, start_from
from agent.patch import Patch
from agent.usage import Usage
from agent.workspace import Workspace


@dataclass
class OpenAIBackend:
    base_url: str
    model: str
    api_key: str
    price_in: float = 0.0  # USD per million prompt tokens
    price_out: float = 0.0
    timeout_s: float = 600.0
    name: str = "openai"

    @classmethod
    def from_env(cls, base_url: str | None = None, model: str | None = None, **_) -> "OpenAIBackend":
        base_url = base_url or os.environ.get("AGENT_OPENAI_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        model = model or os.environ.get("AGENT_OPENAI_MODEL")
        if not model:
            raise BackendError("the openai backend needs a model: --openai-model or AGENT_OPENAI_MODEL")
        return cls(base_url=base_url or "https://api.openai.com/v1", model=model,
                   api_key=os.environ.get("OPENAI_API_KEY") or "unset",
                   price_in=float(os.environ.get("AGENT_OPENAI_PRICE_IN", 0) or 0),
                   price_out=float(os.environ.get("AGENT_OPENAI_PRICE_OUT", 0) or 0))

    def start(self, ws: Workspace, source: Path | None, stack_name: str) -> str:
        return start_from(ws, source, stack_name)

    def _chat(self, system: str, user: str, usage: Usage) -> str:
        from openai import OpenAI, OpenAIError

        client = OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s, max_retries=2)
        started = time.monotonic()
        try:
            reply = client.chat.completions.create(model=self.model, temperature=0,
                                                   messages=[{"role": "system", "content": system},
                                                             {"role": "user", "content": user}])
        except OpenAIError as exc:
            raise BackendError(f"the {self.name} endpoint {self.base_url} failed: {exc}") from None
        usage.duration_ms = int((time.monotonic() - started) * 1000)
        if reply.usage is not None:
            usage.prompt_tokens = reply.usage.prompt_tokens or 0
            usage.completion_tokens = reply.usage.completion_tokens or 0
            usage.total_tokens = reply.usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
        usage.cost_usd = round((usage.prompt_tokens * self.price_in + usage.completion_tokens * self.price_out) / 1e6, 6)
        return reply.choices[0].message.content or ""

    def plan(self, ctx: PlanContext) -> Planned:
        usage = Usage(role="planner", backend=self.name, model=self.model, round=ctx.round)
        text = self._chat(prompts.PLANNER_SYSTEM, prompts.planner_prompt(ctx), usage)
        task, roadmap = prompts.plan_from_reply(text, ctx.roadmap)
        return Planned(task, roadmap, usage)

    def implement(self, ctx: ImplementContext) -> Implemented:
        usage = Usage(role="implementer", backend=self.name, model=self.model, round=ctx.round, attempt=ctx.attempt)
        text = self._chat(prompts.IMPLEMENTER_SYSTEM, prompts.implementer_prompt(ctx), usage)
        try:
            data = prompts.parse_json(text)
            if data.get("give_up"):
                return Implemented(None, usage, str(data["give_up"]), gave_up=True)
            return Implemented(Patch.from_json(data), usage)
        except (ValueError, TypeError) as exc:
            return Implemented(None, usage, f"the reply was not a valid patch ({exc}); reply with JSON only")
