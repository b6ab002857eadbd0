#!/usr/bin/env bash
# The main job: set up, score the shipped stacks on every setting (tiny profile), write the leaderboard.
# Extra arguments go to pytest, e.g. `bash scripts/score.sh --stack url=http://127.0.0.1:8000`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
STACKS=(--stack hf-reference)
for arg in "$@"; do [[ "$arg" == --stack* ]] && STACKS=(); done
exec .venv/bin/python -m pytest scenarios/ --profile tiny "${STACKS[@]}" -p no:cacheprovider -rA "$@"
