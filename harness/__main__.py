"""python -m harness {assets,leaderboard,stacks,compare,matrix,capacity,soak,instrument}: the harness's command line."""
from __future__ import annotations

import argparse
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from harness.errors import HarnessError
from harness.stack import REPO_ROOT


def cmd_assets(args) -> None:
    from harness.assets import ensure_model
    from harness.scenario import find_scenarios

    # A setting may need no model of ours (its stacks bring their own): model null. `audio`: the
    # speech a setting streams, prepared the same way.
    profiles = [s.profile(args.profile) for s in find_scenarios(args.scenarios) if args.profile in s.profiles]
    models = sorted({p.get(key) for p in profiles for key in ("model", "audio")} - {None})
    for name in models:
        path = ensure_model(name, deep_check=True, log=lambda line: print(line, flush=True))
        print(f"{name}\t{path}")


def cmd_leaderboard(args) -> None:
    from harness.leaderboard import write_leaderboard

    if not (args.results_dir / "runs").is_dir():
        raise HarnessError(f"no result rows under {args.results_dir} (it has no runs/ folder)")
    print(write_leaderboard(args.results_dir, args.scenarios, baselines=set(args.baseline or ())))


def cmd_stacks(args) -> None:
    from harness.stack import load_spec, registered

    for name, path in sorted(registered().items()):
        spec = load_spec(path)
        print(f"{name:20s} {', '.join(spec.supports):40s} {spec.description}")


def wide_console():
    """rich's console; piped into a file or `tee`, rich would squeeze a table into 80 columns of ellipses."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def cmd_compare(args) -> None:
    from harness.compare import compare

    console = wide_console()
    summary = compare(args.scenario, args.stack, args.baseline or [], args.profile, args.results_dir, args.run_id,
                      args.pytest_args, console, rounds=args.rounds)
    if summary["pytest_exit_code"] not in (0, 1):  # 1: some cell failed, and the table says which
        raise HarnessError(f"pytest exited with code {summary['pytest_exit_code']}")


def cmd_matrix(args) -> None:
    from harness.matrix import run_matrix
    from harness.scenario import find_scenarios, load_scenario

    if args.scenario:
        paths = [args.scenarios / f"{name}.yaml" for name in args.scenario]
        missing = [p.stem for p in paths if not p.is_file()]
        if missing:
            raise HarnessError(f"unknown scenario {missing[0]!r}: no {missing[0]}.yaml under {args.scenarios}")
        scenarios = [load_scenario(p) for p in paths]
    else:
        scenarios = find_scenarios(args.scenarios)
    console = wide_console()
    outcomes = run_matrix(scenarios, args.stack, args.baseline or [], args.profile, args.rounds, args.on, args.address,
                          args.resources, args.any_commit, args.job_timeout, args.results_dir, args.scenarios,
                          args.pytest_args, console)
    broken = [o for o in outcomes if o.status not in ("ok", "cells failed")]
    if broken:
        raise HarnessError(f"{len(broken)} of {len(outcomes)} jobs did not finish: "
                           + "; ".join(f"{o.job.setting} on {o.machine}: {o.status}" for o in broken))


def resources_arg(value: str) -> dict[str, float]:
    """A JSON object of Ray resources a job needs beside its slot, as '{"GPU": 1}'."""
    import json

    try:
        found = json.loads(value)
    except ValueError:
        found = None
    if not isinstance(found, dict) or not all(isinstance(v, (int, float)) and v > 0 for v in found.values()):
        raise argparse.ArgumentTypeError(f"not a JSON object of positive amounts: {value!r}")
    return {str(k): float(v) for k, v in found.items()}


def cmd_capacity(args) -> None:
    from harness.capacity import clock_error, measure

    m = measure(args.requests, args.concurrency)
    print(f"load generator: {m['req_per_s']:.0f} req/s ({m['completed']} of {m['requests']} streamed requests at "
          f"concurrency {m['concurrency']}, {m['failed']} failed), latency p50 {m['latency_p50_ms']:.2f} ms, "
          f"p99 {m['latency_p99_ms']:.2f} ms; {m['cpus']} CPUs ({m['cpu']}), load {m['load_before']} -> {m['load_after']}")
    for concurrency in args.clock_concurrency:
        c = clock_error(concurrency, args.clock_requests)
        late, sent = c["read_late_ms"], c["send_to_read_ms"]
        print(f"clock at {concurrency} streams ({c['chunks']} chunks, {c['chunks_per_s']:.0f}/s): a chunk read "
              f"{late['p50']:.2f} ms after the server wrote it (p50), p99 {late['p99']:.2f}, max {late['max']:.2f}; "
              f"send to the server having read the request p50 {sent['p50']:.2f} ms, p99 {sent['p99']:.2f}; "
              f"load {c['load_before']} -> {c['load_after']}")


def cmd_soak(args) -> None:
    from harness.soak import run

    run(args.stack, args.scenario, args.profile, args.scenarios, args.results_dir, args.rounds, args.per_round,
        args.concurrency)


def cmd_instrument(args) -> None:
    from harness.instrument import run

    run(args.stack, args.scenario, args.pool, args.num_prompts, args.output_len, args.concurrency, args.repeats,
        args.scenarios, args.results_dir, args.temperature)


def temperature_arg(value: str) -> float | None:
    """A temperature >= 0, or 'server' (None) for the server's default."""
    if value == "server":
        return None
    try:
        t = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'server': {value!r}") from None
    if not t >= 0:
        raise argparse.ArgumentTypeError(f"a temperature is >= 0, not {value}")
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    parser.add_argument("--scenarios", type=Path, default=REPO_ROOT / "scenarios", help="scenario YAML folder")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("assets", help="prepare (offline, cached) the models a profile needs")
    p.add_argument("--profile", default="tiny")
    p.set_defaults(func=cmd_assets)
    p = sub.add_parser("leaderboard", help="write results/LEADERBOARD.md and plots from result rows")
    p.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    p.add_argument("--baseline", action="append", help="also treat this stack as a baseline for ratios")
    p.set_defaults(func=cmd_leaderboard)
    p = sub.add_parser("stacks", help="list the registered stacks")
    p.set_defaults(func=cmd_stacks)
    p = sub.add_parser("compare", help="score stacks on one scenario in one run; print ratios and bandwidth achieved")
    p.add_argument("--scenario", required=True, help="the scenario's name (a YAML under scenarios/)")
    p.add_argument("--stack", action="append", required=True, help="repeatable; the first is the one compared")
    p.add_argument("--baseline", action="append", help="ratios against these (default: every other stack)")
    p.add_argument("--profile", default="tiny")
    p.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    p.add_argument("--run-id", default=None)
    p.add_argument("--rounds", type=int, default=1,
                   help="score N times, one repeat of each cell a round, the stack order reversed every other "
                        "round, so slow phases of the machine fall on every stack alike (instead of pytest's "
                        "--repeats, which measures one stack's repeats back to back)")
    p.add_argument("pytest_args", nargs="*", help="passed to pytest after --, e.g. -- -k 'conc-1 or rate-inf'")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("matrix", help="score settings x stacks over the machines of a Ray cluster, one job a machine "
                                      "at a time; the rows come back to results/")
    p.add_argument("--address", default=None,
                   help="the Ray cluster ('auto': the one this machine joined); default: a local Ray instance, this "
                        "machine alone")
    p.add_argument("--scenario", action="append", help="repeatable; default: every setting with the profile")
    p.add_argument("--stack", action="append", required=True,
                   help="repeatable; NAME@A+B scores it on those settings only, as for pytest")
    p.add_argument("--baseline", action="append", help="ratios against these, where a job has them")
    p.add_argument("--profile", default="tiny")
    p.add_argument("--rounds", type=int, default=1, help="each job's compare --rounds")
    p.add_argument("--on", choices=["each", "any"], default="each",
                   help="each: every setting on every machine (a table per CPU); any: once, on a free machine")
    p.add_argument("--resources", type=resources_arg, default={},
                   help="what a job needs beside its slot, as Ray resources: '{\"GPU\": 1}' for the paper profile")
    p.add_argument("--any-commit", action="store_true", help="also give jobs to machines at another commit")
    p.add_argument("--job-timeout", type=float, default=4 * 3600.0, help="seconds a job may run (default 4 h)")
    p.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    p.add_argument("pytest_args", nargs="*", help="passed to each job's pytest after --")
    p.set_defaults(func=cmd_matrix)
    p = sub.add_parser("capacity", help="the load generator's own ceiling: req/s against a server that answers at once")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--clock-concurrency", type=lambda v: [int(x) for x in v.split(",") if x], default=[1, 8, 32],
                   help="streams at once for the clock's error, comma-separated (empty: none)")
    p.add_argument("--clock-requests", type=int, default=64, help="streamed requests per clock reading")
    p.set_defaults(func=cmd_capacity)
    p = sub.add_parser("soak", help="rounds of mixed, cancelled and abandoned streams against a stack: errors, RSS, p99")
    p.add_argument("--stack", required=True)
    p.add_argument("--scenario", required=True, help="a text setting whose profile names the model to serve")
    p.add_argument("--profile", default="tiny")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--per-round", type=int, default=250)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    p.set_defaults(func=cmd_soak)
    p = sub.add_parser("instrument", help="the harness against vllm bench serve on one stack: same prompts and "
                                          "requests, in turns; throughput, TTFT p50, TPOT p50 within 5%%")
    p.add_argument("--stack", required=True)
    p.add_argument("--scenario", required=True, help="a text setting whose tiny profile names the model to serve")
    p.add_argument("--pool", type=Path, required=True, help="prompts: a JSONL file of objects with id and text")
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--temperature", type=temperature_arg, default=0.0,
                   help="sent by both instruments (default 0, greedy); 'server': neither sends one, as "
                        "`vllm bench serve` does unless told, so the server's default sampling is measured")
    p.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    p.set_defaults(func=cmd_instrument)
    args = parser.parse_args(argv)
    try:
        with stop_signals():
            args.func(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the stack it launched, if any, was stopped", file=sys.stderr)
        return 130
    return 0


@contextmanager
def stop_signals():
    """SIGTERM and SIGINT as Ctrl-C while a command runs: a command that launched a stack (soak, instrument)
    unwinds and stops it. SIGINT gets Python's own handler even where the caller ignored it (a background
    job of a non-interactive shell, as CI runs us), since asyncio.run takes SIGINT over only from that handler."""
    previous = signal.signal(signal.SIGTERM, _interrupted), signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def _interrupted(signum, frame):
    # handled as Ctrl-C is (stop_signals installed a handler for it): inside asyncio.run, SIGINT's handler is the
    # runner's, which cancels the main task and raises KeyboardInterrupt once it has unwound; raised here instead,
    # it lands in whichever task runs and asyncio logs that task's unretrieved exception with a traceback
    signal.getsignal(signal.SIGINT)(signal.SIGINT, frame)


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        from harness import ledger

        ledger.stop_own()  # a stack that a signal left running between its launch and its teardown
