"""`mlx_lm convert`, then its config made readable by mlx-lm 0.32.2.

Run with mlx-lm's own interpreter, in place of `python -m mlx_lm convert` (same arguments).
transformers 5 writes a model's RoPE base under `rope_parameters`; mlx-lm 0.32.2's Llama reads only
a top-level `rope_theta` and otherwise runs on its default, 10000 (SmolLM2's is 100000), so its
outputs drift from the model's. The converted config gets the top-level key it reads; the
weights and mlx-lm itself are untouched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def lift_rope_theta(config_path: Path) -> bool:
    """Copy `rope_parameters.rope_theta` to a top-level `rope_theta` where only the first is there
    (default RoPE only: a scaled one has more than a base). Whether it changed the file."""
    config = json.loads(config_path.read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in config or "rope_theta" not in rope or rope.get("rope_type", "default") != "default":
        return False
    config["rope_theta"] = rope["rope_theta"]
    config_path.write_text(json.dumps(config, indent=2))
    return True


def main() -> None:
    from mlx_lm.convert import main as convert

    convert()
    out = Path(sys.argv[sys.argv.index("--mlx-path") + 1])
    if lift_rope_theta(out / "config.json"):
        print(f"rope_theta lifted to the top level of {out / 'config.json'} (mlx-lm reads only that)")


if __name__ == "__main__":
    main()
