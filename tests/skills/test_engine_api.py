"""Engines import skills/engine_api, never the server in front of them: loading an engine (for a
benchmark, a test, another server) pulls in no web framework."""
from __future__ import annotations

import subprocess
import sys

import pytest

from harness.stack import REPO_ROOT

SERVER_MODULES = ("fastapi", "uvicorn", "starlette", "skills.openai_server")


@pytest.mark.parametrize("engine", ["skills.engine_core.engine", "skills.hybrid_engine.engine",
                                    "skills.speculative_decoding", "baselines.hf_reference.generator"])
def test_an_engine_loads_without_the_server(engine):
    probe = (f"import sys, {engine}; "
             f"print(' '.join(m for m in {SERVER_MODULES!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{engine} imports the server layer: {out.stdout.strip()}"


def test_the_probe_sees_the_server_when_it_is_imported():
    probe = f"import sys, skills.openai_server; print(' '.join(m for m in {SERVER_MODULES!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert "fastapi" in out.stdout and "skills.openai_server" in out.stdout
