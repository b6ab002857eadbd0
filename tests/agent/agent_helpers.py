"""Shared by the end-to-end tests: run `python -m agent`, read a workspace back, start the LLM double."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from harness.launcher import free_port
from harness.stack import REPO_ROOT

HERE = Path(__file__).parent
STANDIN = HERE / "standin"


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", "run", "--quiet", *args]


def run_agent(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(agent_cmd(*args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def git(ws: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=ws, capture_output=True, text=True, check=True).stdout


@contextmanager
def llm_double(script: dict, tmp_path: Path):
    """The scripted OpenAI-compatible endpoint, as a process; yields (base_url, request log path)."""
    (tmp_path / "script.json").write_text(json.dumps(script))
    log = tmp_path / "llm_requests.jsonl"
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "llm_double.py"), "--port", str(port), "--script",
                             str(tmp_path / "script.json"), "--log", str(log)], cwd=REPO_ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the LLM double did not start")
            time.sleep(0.2)
        yield base + "/v1", log
    finally:
        proc.kill()
        proc.wait()


# A knob space richer than the stand-in's own, for the fast tests of the search.
SEARCH_KNOBS = {"step-overhead-ms": {"values": [60, 20, 0], "naive": 60},
                "threads": {"values": [1, 2], "naive": 1},
                "dtype": {"values": ["float32", "bfloat16"], "naive": "float32"}}


def search_stack(folder: Path) -> Path:
    """The stand-in copied to `folder`, declaring SEARCH_KNOBS."""
    from agent import stackfiles

    data = stackfiles.copy(STANDIN, folder, relative=False)
    data["knobs"] = SEARCH_KNOBS
    stackfiles.save(folder, data)
    return folder
