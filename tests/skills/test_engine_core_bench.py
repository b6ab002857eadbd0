"""The decode bench's long prompt (`--prompt-tokens`): prose of the asked length, and a one-line
refusal past what it holds. Only the tiny profile's tokenizer is read."""
from __future__ import annotations

import pytest

from harness.assets import ensure_model
from skills.engine_core.bench import long_prompt


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ensure_model("smollm2-135m-instruct"))


def test_the_long_prompt_is_prose_of_the_asked_length(tokenizer):
    ids = long_prompt(tokenizer, 550)
    assert len(ids) == 550
    assert len(set(ids)) > 150  # text, not one sentence repeated (that has ~12 distinct tokens)
    assert long_prompt(tokenizer, 100) == ids[:100]


def test_a_prompt_longer_than_the_prose_is_refused_in_one_line(tokenizer):
    with pytest.raises(SystemExit, match=r"--prompt-tokens: at most \d+"):
        long_prompt(tokenizer, 100_000)
