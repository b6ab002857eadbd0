"""Engagement guards: a speed-up claim needs evidence that its mechanism ran.

A guard names the stack feature it applies to (a `supports` entry a setting lets a stack claim)
and where the evidence is read: a per-request usage count the client summed over the cell (from
usage.completion_tokens_details) and/or `/metrics` counters whose growth over the cell counts
(e.g. `spec_accepted_tokens`, `prefix_cache_hit_tokens`). The guard passes when any source shows a positive amount and
every `consistency` check (a scenario's own, relating the amount to other counters: output
tokens, forward passes) finds nothing wrong: one number a stack claims is not evidence alone.
Stacks that do not declare the feature are measured all the same, without the guard: a baseline
that ignores the optimisation simply gets no speed-up from it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.counters import Counters

# (the cell's metrics, the counters that moved, the usage amount summed) -> what is wrong, or None
Consistency = Callable[[dict, Counters | None, float | None], str | None]


@dataclass(frozen=True)
class Guard:
    feature: str  # the `supports` entry the guard applies to
    usage_key: str | None = None  # a per-request usage count, summed over the cell by the client
    counters: tuple[str, ...] = ()  # /metrics counters, any of which growing counts
    consistency: tuple[Consistency, ...] = ()

    def applies(self, supports: tuple[str, ...] | list[str]) -> bool:
        return self.feature in supports

    def check(self, usage_total: float | None, counter_delta: Counters | None,
              metrics: dict | None = None) -> "GuardResult":
        counters = {k: counter_delta[k] for k in self.counters if counter_delta and k in counter_delta}
        evidence = {"usage": {self.usage_key: usage_total} if self.usage_key else {}, "counters": counters}
        if (usage_total or 0) > 0 or any(v > 0 for v in counters.values()):
            wrong = next((w for c in self.consistency if (w := c(metrics or {}, counter_delta, usage_total))), None)
            if wrong:
                return GuardResult(False, evidence, f"engagement guard: {wrong}")
            return GuardResult(True, evidence, "")
        sources = []
        if self.usage_key:
            sources.append(f"usage {self.usage_key} " + ("not reported" if usage_total is None else f"= {usage_total:g}"))
        for name in self.counters:
            if counter_delta is None:
                sources.append(f"/metrics {name}: no readable /metrics")
            else:
                sources.append(f"/metrics {name} " + (f"grew by {counters[name]:g}" if name in counters else "absent"))
        reason = (f"engagement guard: the stack declares {self.feature!r} but nothing shows it ran "
                  f"({'; '.join(sources)})")
        return GuardResult(False, evidence, reason)


@dataclass(frozen=True)
class GuardResult:
    ok: bool
    evidence: dict
    reason: str

    def to_json(self) -> dict:
        return {"verdict": "pass" if self.ok else "fail", "evidence": self.evidence, "reason": self.reason}

