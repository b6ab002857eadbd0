"""python -m agent run --scenario X [--profile tiny] [--backend offline|openai|codex] [--max-rounds N]
[--resume [RUN]]: generate a serving stack for one setting, judged and measured by the harness."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent import processes
from agent.config import DEFAULT_SOURCE, PUBLISH_DIR, RUNS_DIR, RunConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent loop on one scenario")
    run.add_argument("--scenario", help="scenario name, e.g. standard_serving (not needed with --resume)")
    run.add_argument("--profile", default=None, help="profile of the final judgement (default tiny)")
    run.add_argument("--eval-profile", default=None, help="profile of the inner evaluations (default smoke)")
    run.add_argument("--backend", choices=["offline", "openai", "codex"], default=None, help="default offline")
    run.add_argument("--max-rounds", type=int, default=None, help="round budget (default 8)")
    run.add_argument("--max-attempts", type=int, default=None, help="implementer attempts per round (default 3)")
    run.add_argument("--min-rounds", type=int, default=None,
                     help="rounds tried before the stop test (default 1: the starting stack is never the answer)")
    run.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN",
                     help="continue a run from its last checkpoint: its id or folder (default: the latest run)")
    run.add_argument("--from", dest="source", default=None,
                     help=f"stack folder to start from (default for offline: the scenario YAML's agent.start under results/stacks, else {DEFAULT_SOURCE.relative_to(DEFAULT_SOURCE.parents[2])})")
    run.add_argument("--run-id", default=None, help="name of the run (default: a timestamp)")
    run.add_argument("--runs-dir", default=str(RUNS_DIR), help="where workspaces go (default agent_runs/)")
    run.add_argument("--publish-dir", default=str(PUBLISH_DIR), help="where the winner is published (results/stacks)")
    run.add_argument("--metric", default=None,
                     help="optimise this metric instead of the primary: one of the setting's leaderboard columns")
    run.add_argument("--direction", choices=["higher", "lower"], default=None, help="for --metric (default: by name)")
    run.add_argument("--margin", type=float, default=None, help="ratio to beat each baseline by (YAML agent.margin)")
    run.add_argument("--baseline", action="append", default=None, help="baseline stack (repeatable; YAML agent.baselines)")
    run.add_argument("--no-baselines", action="store_true", help="measure no baseline: run to the round budget")
    run.add_argument("--min-gain", type=float, default=None, help="relative gain needed to keep a change (0.02)")
    run.add_argument("--openai-base-url", default=None)
    run.add_argument("--openai-model", default=None)
    run.add_argument("--codex-model", default=None)
    run.add_argument("--quiet", action="store_true", help="no progress on screen")
    return parser


def new_config(args: argparse.Namespace) -> RunConfig:
    from harness.bench import new_run_id

    if not args.scenario:
        raise SystemExit("python -m agent run: --scenario is required (or --resume RUN)")
    backend = args.backend or "offline"
    source = args.source or (_starting_stack(args.scenario) if backend == "offline" else None)
    if source and not (Path(source) / "stack.yaml").is_file():
        raise SystemExit(f"python -m agent run: no stack to start from at {source} (need {source}/stack.yaml); "
                         f"pass --from DIR")
    cfg = RunConfig(scenario=args.scenario, backend=backend, source=source, run_id=args.run_id or new_run_id(),
                    runs_dir=args.runs_dir, publish_dir=args.publish_dir, metric=args.metric,
                    direction=args.direction, margin=args.margin,
                    baselines=[] if args.no_baselines else args.baseline,
                    backend_options={k: v for k, v in {"base_url": args.openai_base_url, "model": args.openai_model,
                                                       "codex_model": args.codex_model}.items() if v})
    _apply_overrides(cfg, args)
    return cfg


def _starting_stack(scenario: str) -> str:
    """The published stack the scenario's `agent.start` names (its folder under results/stacks),
    else the default one."""
    from agent.loop import scenario_files

    try:
        start = scenario_files(scenario)[1].get("start")
    except ValueError as exc:
        raise SystemExit(f"python -m agent run: {exc}") from None
    return str(DEFAULT_SOURCE.parent / start) if start else str(DEFAULT_SOURCE)


def _apply_overrides(cfg: RunConfig, args: argparse.Namespace) -> None:
    for key in ("profile", "eval_profile", "max_rounds", "max_attempts", "min_rounds", "min_gain"):
        value = getattr(args, key)
        if value is not None:
            setattr(cfg, key, value)


def resumed_config(args: argparse.Namespace) -> RunConfig:
    import json

    runs = Path(args.runs_dir)
    if args.resume == "latest":
        candidates = sorted((p for p in runs.glob("*/run.json")), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise SystemExit(f"python -m agent run --resume: no run under {runs}")
        folder = candidates[-1].parent
    else:
        folder = Path(args.resume) if Path(args.resume).is_dir() else runs / args.resume
    if not (folder / "run.json").is_file():
        raise SystemExit(f"python -m agent run --resume: {folder} is not a run (no run.json)")
    cfg = RunConfig.from_json(json.loads((folder / "run.json").read_text())["config"])
    cfg.runs_dir, cfg.run_id = str(folder.resolve().parent), folder.name
    _apply_overrides(cfg, args)  # e.g. a larger --max-rounds for the rest of the run
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from agent.backends import make_backend
    from agent.backends.base import BackendError
    from agent.display import Display
    from agent.loop import AgentLoop, IntegrityBroken
    from harness.errors import HarnessError

    cfg = resumed_config(args) if args.resume else new_config(args)
    processes.exit_on_sigterm()
    display = Display(quiet=args.quiet)
    try:
        backend = make_backend(cfg.backend, **cfg.backend_options)
        loop = AgentLoop(cfg, backend, display)
        result = loop.run(resume=bool(args.resume))
    except (BackendError, IntegrityBroken, HarnessError, ValueError, RuntimeError) as exc:
        print(f"python -m agent run: {exc}", file=sys.stderr)
        return 2
    display.line(result.table)
    f = result.final
    verdict = ("PASS" if f.passed else "FAIL") + (", beats every baseline" if f.beats_all else "")
    display.line(f"stop: {result.stop_reason}")
    display.line(f"final on {f.profile}: {verdict}; {f.summary}")
    display.line(f"workspace: {result.workspace}")
    if result.published:
        display.line(f"published: {result.published}")
    return 0 if f.passed else 1


if __name__ == "__main__":
    sys.exit(main())
