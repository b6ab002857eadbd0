"""A pool of prompt texts shipped with the scenarios, drawn from with a seed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harness.errors import HarnessError


def load_pool(path: Path) -> list[dict]:
    """One JSON object per line with at least `id` and `text`."""
    try:
        items = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read prompt pool {path}: {exc}") from None
    if not items or not all("text" in i and "id" in i for i in items):
        raise HarnessError(f"prompt pool {path} must hold objects with id and text")
    return items


def draw(pool: list[dict], n: int, seed: int) -> list[dict]:
    """n items in a seeded order; cycles through the pool when n exceeds it."""
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[order[i % len(pool)]] for i in range(n)]


def spread(n: int, low: int, high: int) -> list[int]:
    """n integers from low to high inclusive, evenly spaced."""
    if n == 1:
        return [low]
    return [round(low + (high - low) * i / (n - 1)) for i in range(n)]


def repeat_salt(salt: str | None, repeat: int) -> str | None:
    """The salt of a load point's `repeat`-th measurement: the run's for the first, a derived one
    after it, so a repeat sends prompts no earlier repeat sent (a stack's prompt cache, where it
    has no reset endpoint, would otherwise serve repeats 2.. warm). None stays None (unsalted)."""
    return salt if salt is None or repeat == 0 else f"{salt}.r{repeat}"


def salted(text: str, salt: str | None) -> str:
    """`text` carrying the run's salt at its head: a fresh salt per run makes every prompt new, so an
    answer table built at start-up or kept from an earlier run matches nothing."""
    return f"[{salt}] {text}" if salt else text
