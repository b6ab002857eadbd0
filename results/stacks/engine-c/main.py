"""engine-c: setting C's stack (prefix caching on a hybrid attention + GatedDeltaNet model),
composed from skills/hybrid_engine + skills/hybrid_cache + skills/openai_server.

python results/stacks/engine-c/main.py --model DIR --port P [knobs] [--no-prefix-cache]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The checkout holding skills/: above this file, else the working directory (the harness launches
# every stack from the repository root).
ROOT = next((p for p in Path(__file__).resolve().parents if (p / "skills" / "__init__.py").is_file()), Path.cwd())
sys.path.insert(0, str(ROOT))

from skills.hybrid_engine.serve import engine_arguments, serve_engine  # noqa: E402

# Defaults; the stack.yaml command sets the values it was tuned with (its knobs section).
DEFAULTS = dict(max_num_seqs=16, max_num_batched_tokens=512, max_model_len=8192, state_block=64, cache_mb=2048,
                wait_for_shared=64)


def main(argv: list[str] | None = None) -> None:
    serve_engine("engine-c", engine_arguments(__doc__, DEFAULTS).parse_args(argv))


if __name__ == "__main__":
    main()
