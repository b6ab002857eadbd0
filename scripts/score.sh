#!/usr/bin/env bash
# The main job: set up, score the shipped stacks (engine-a, engine-b, engine-c, engine-d, engine-e, engine-f, engine-g) and the baselines on every
# setting (tiny profile), write the leaderboard.
# Extra arguments go to pytest, e.g. `bash scripts/score.sh --stack url=http://127.0.0.1:8000`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Every engine that installs on this machine: llama.cpp builds from source (~8 min the first time);
# SGLang needs CUDA and is reported "not applicable" without it.
ENGINES=(vllm llamacpp mlx-lm)
command -v nvidia-smi >/dev/null && ENGINES+=(sglang)
bash scripts/setup.sh "${ENGINES[@]}"
# Setting C's model (olmo_hybrid) runs on its own stacks: engine-c, engine-c with its cache off, vLLM's
# hybrid configuration (CUDA only: see its spec) and mlx-lm behind a token-id prompt shim. Setting D's
# (moonshine_streaming) on engine-d, engine-d re-encoding every chunk's whole buffer, hf-reference (the
# study's full recompute) and vLLM's row saying why it does not serve it. Setting E's (JSON schemas) on
# engine-e (MLX), hf-reference (a per-token grammar mask), mlx-lm as shipped (it ignores response_format),
# mlx-lm with a per-token llguidance logits processor (baselines/mlx_constrained.py), vLLM's structured
# outputs and llama.cpp's grammar (baselines/llamacpp_json.py). Setting F's (a seeded Show-o2-style
# text-to-image model) on engine-f, engine-f without its text K/V reuse and hf-reference (the plain loop);
# setting G's (the same model) on engine-g (MLX) and hf-reference.
STACKS=(--stack engine-a@A+B --stack engine-b@A+B --stack engine-c@C --stack engine-c.prefix_caching-off@C
        --stack engine-d@D --stack engine-d.encoder_cache-off@D --stack engine-e@E
        --stack engine-f@F --stack engine-f.text_kv_reuse-off@F --stack engine-g@G
        --stack hf-reference --stack vllm@A+B+D+E --stack vllm-ngram@A+B --stack vllm-hybrid@C --stack llamacpp@A+B+E
        --stack mlx-lm@A+B+E --stack mlx-lm-constrained@E --stack mlx-lm-hybrid@C --stack sglang@A+B)
for arg in "$@"; do [[ "$arg" == --stack* ]] && STACKS=(); done
exec .venv/bin/python -m pytest scenarios/ --profile tiny "${STACKS[@]}" -p no:cacheprovider -rA "$@"
