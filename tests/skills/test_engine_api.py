"""Engines import skills/engine_api, never the server in front of them: loading an engine (for a
benchmark, a test, another server) pulls in no web framework. No skill's library imports the harness
(only the skills' bench commands use it, to find the cached models and probe the machine)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from harness.stack import REPO_ROOT

SERVER_MODULES = ("fastapi", "uvicorn", "starlette", "skills.openai_server", "skills.asr_server",
                  "skills.image_server")


@pytest.mark.parametrize("engine", ["skills.engine_core.engine", "skills.hybrid_engine.engine",
                                    "skills.speculative_decoding", "skills.asr_engine", "skills.text_kv_reuse",
                                    "baselines.hf_reference.generator"])
def test_an_engine_loads_without_the_server(engine):
    probe = (f"import sys, {engine}; "
             f"print(' '.join(m for m in {SERVER_MODULES!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{engine} imports the server layer: {out.stdout.strip()}"


def test_the_probe_sees_the_server_when_it_is_imported():
    probe = f"import sys, skills.openai_server; print(' '.join(m for m in {SERVER_MODULES!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert "fastapi" in out.stdout and "skills.openai_server" in out.stdout


SKILLS = ["engine_core.engine", "hybrid_engine.engine", "hybrid_cache", "speculative_decoding", "cpu_kernels",
          "asr_engine", "encoder_cache", "structured_output", "image_model", "text_kv_reuse", "openai_server",
          "asr_server", "image_server", "engine_api"]


def test_no_skill_library_imports_the_harness_or_the_baselines():
    probe = (f"import sys, importlib; [importlib.import_module('skills.' + s) for s in {SKILLS!r}]; "
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & {'harness', 'baselines'})))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"a skill imports: {out.stdout.strip()}"


def test_a_request_past_the_context_or_without_a_prompt_is_refused():
    from skills.engine_api import SamplingParams, check_fits

    params = SamplingParams(max_tokens=8)
    check_fits([1] * 24, params, max_model_len=32)  # exactly full: runs
    with pytest.raises(ValueError, match=r"prompt \(25\) \+ max_tokens \(8\) exceeds max_model_len 32"):
        check_fits([1] * 25, params, max_model_len=32)
    with pytest.raises(ValueError, match="the prompt has no tokens"):
        check_fits([], params, max_model_len=32)
