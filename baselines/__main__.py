"""python -m baselines {install ENGINE [--force], list}: the real engines' environments."""
from __future__ import annotations

import argparse
import sys

from harness.errors import HarnessError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m baselines", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("install", help="install an engine into its own virtual environment")
    p.add_argument("engine", nargs="+", help="vllm, llamacpp, mlx-lm, sglang")
    p.add_argument("--force", action="store_true", help="rebuild the environment from scratch")
    sub.add_parser("list", help="which engines are installed")
    args = parser.parse_args(argv)
    from baselines.install import install, installed_summary

    try:
        if args.command == "install":
            for name in args.engine:
                install(name, force=args.force)
        else:
            for name, state in installed_summary():
                print(f"{name:10s} {state}")
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to finish", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
