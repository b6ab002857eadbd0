#!/usr/bin/env bash
# The main job: set up, score the shipped stacks (engine-a, engine-b) and the baselines on every
# setting (tiny profile), write the leaderboard.
# Extra arguments go to pytest, e.g. `bash scripts/score.sh --stack url=http://127.0.0.1:8000`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Every engine that installs on this machine: llama.cpp builds from source (~8 min the first time);
# SGLang needs CUDA and is reported "not applicable" without it.
ENGINES=(vllm llamacpp mlx-lm)
command -v nvidia-smi >/dev/null && ENGINES+=(sglang)
bash scripts/setup.sh "${ENGINES[@]}"
STACKS=(--stack engine-a --stack engine-b --stack hf-reference --stack vllm --stack vllm-ngram --stack llamacpp
        --stack mlx-lm --stack sglang)
for arg in "$@"; do [[ "$arg" == --stack* ]] && STACKS=(); done
exec .venv/bin/python -m pytest scenarios/ --profile tiny "${STACKS[@]}" -p no:cacheprovider -rA "$@"
