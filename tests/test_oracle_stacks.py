"""The setting-A oracle end to end: real reference, real hf-reference server, right and wrong models."""
from pathlib import Path

import pytest

from harness.assets import ensure_model
from harness.bench import Bench
from harness.generation import Prompt
from harness.launcher import launch
from harness.scenario import load_scenario
from harness.stack import resolve_stack

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "standard_serving.yaml"
PROMPTS = [
    Prompt("capital", "What is the capital of France? Answer in one sentence.", chat=True, max_tokens=12),
    Prompt("haiku", "Write a haiku about the sea.", chat=True, max_tokens=16),
    Prompt("list", "Three primary colours are\n", chat=False, max_tokens=10),
    Prompt("python", "def add(a, b):\n", chat=False, max_tokens=14),
]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return ensure_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def other_model(smollm2, tmp_path_factory):
    """A different model with the same tokenizer: two seeded random layers."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    out = tmp_path_factory.mktemp("other-model")
    config = AutoConfig.from_pretrained(smollm2)
    config.num_hidden_layers = 2
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2).save_pretrained(out)
    return out


def judge_stack(model_dir: Path, reference_dir: Path, tmp_path: Path):
    spec = resolve_stack("hf-reference")
    with launch(spec, model_dir, tmp_path / "logs", startup_timeout_s=300) as stack:
        bench = Bench(run_id="oracle-test", results_dir=tmp_path, scenario=load_scenario(SCENARIO),
                      profile="tiny", spec=spec, stack=stack, model_dir=model_dir)
        return bench.accuracy(PROMPTS, request_timeout_s=120, reference_dir=reference_dir), bench


def test_reference_server_on_the_same_weights_passes(smollm2, tmp_path):
    verdict, bench = judge_stack(smollm2, smollm2, tmp_path)
    assert verdict.ok, verdict.summary
    row = bench.rows[-1]
    assert row.kind == "accuracy" and row.status == "ok" and row.accuracy["verdict"] == "pass"
    assert "Paris" in row.accuracy["outputs"][0]


def test_a_different_model_fails(smollm2, other_model, tmp_path):
    verdict, bench = judge_stack(other_model, smollm2, tmp_path)
    assert not verdict.ok
    assert all(not p.ok for p in verdict.prompts), verdict.summary
    assert bench.rows[-1].status == "failed" and "differs" in verdict.summary
