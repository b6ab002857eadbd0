"""Prompts are salted per run: an answer table built at start-up or kept from an earlier run
matches no prompt of the next run, while a run given the same salt sends the same prompts."""
import importlib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def profile(name: str) -> dict:
    return yaml.safe_load((REPO / "scenarios" / f"{name}.yaml").read_text())["profiles"]["tiny"]


def texts_a(salt: str) -> list[str]:
    module = importlib.import_module("scenarios.test_standard_serving")
    p = profile("standard_serving")
    prompts = module.accuracy_prompts(p["accuracy"], salt) + module.load_prompts(p["load"], 26, 5, salt)
    return [x.text for x in prompts]


def texts_b(salt: str) -> list[str]:
    module = importlib.import_module("scenarios.test_code_editing")
    p = profile("code_editing")
    return ([x.text for x in module.accuracy_prompts(p, salt)]
            + [module.payload(item, p, salt)["messages"][0]["content"] for item in module.scored_items(p)])


@pytest.mark.parametrize("texts", [texts_a, texts_b], ids=["A", "B"])
def test_two_runs_share_no_prompt_and_one_salt_repeats_them(texts):
    first, second = texts("3f9a0c11"), texts("b2e47d05")
    assert not set(first) & set(second)
    assert texts("3f9a0c11") == first
    assert all("3f9a0c11" in t for t in first)


@pytest.mark.parametrize("texts", [texts_a, texts_b], ids=["A", "B"])
def test_each_repeat_sends_new_prompts_and_the_first_is_the_runs(texts):
    from harness.prompts import repeat_salt

    assert repeat_salt("3f9a0c11", 0) == "3f9a0c11" and repeat_salt(None, 3) is None  # unsalted stays unsalted
    runs = [texts(repeat_salt("3f9a0c11", r)) for r in range(3)]
    assert runs[0] == texts("3f9a0c11")
    assert all(not set(a) & set(b) for i, a in enumerate(runs) for b in runs[i + 1:])
