"""Start a stack's process, wait for health, watch it, and tear its whole process group down."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from harness import ledger, session
from harness.errors import StackError
from harness.placeholders import Placeholders
from harness.stack import REPO_ROOT, StackSpec

LOG_TAIL_LINES = 25


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


ERROR_LINE = re.compile(r"^\s*([\w.]+(Error|Exception)|error|ERROR)\b[:\s]")


def cause(log_tail: str) -> str:
    """The last line of a log that states an error, as the one-line reason for a failure."""
    for line in reversed(log_tail.splitlines()):
        if ERROR_LINE.match(line):
            return line.strip()[:300]
    return "see the log"


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open(errors="replace") as f:
            return "".join(deque(f, maxlen=lines)).rstrip()
    except OSError:
        return "(no log)"


@dataclass
class RunningStack:
    """A stack that is up: a base URL and, for launched ones, the process behind it."""

    spec: StackSpec
    base_url: str
    log_path: Path | None = None
    process: subprocess.Popen | None = None
    started_s: float = 0.0  # seconds from launch to healthy
    engines: dict[str, dict] = field(default_factory=dict)  # engine environments used, with versions
    record: Path | None = None  # its entry in harness.ledger while it runs
    _closed: bool = field(default=False, repr=False)

    def death(self, wait_s: float = 0.0) -> str | None:
        """None while the stack is alive; otherwise a one-paragraph report with its last log lines.
        wait_s: how long to give a process that may be dying (its sockets close before it is reaped)."""
        if self.process is None:
            return None
        if wait_s > 0:
            try:
                self.process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                pass
        if self.process.poll() is None:
            return None
        last = tail(self.log_path)
        code = self.process.returncode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return (
            f"stack {self.spec.name} {how}: {cause(last)}\n"
            f"last lines of {self.log_path}:\n{last}"
        )

    def stop(self, grace_s: float = 10.0) -> None:
        if self._closed or self.process is None:
            return
        self._closed = True
        session.stop(self.process, grace_s)  # with the engine workers it left behind, which share its group
        ledger.forget(self.record)

    def __enter__(self) -> "RunningStack":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def connect(spec: StackSpec, timeout_s: float = 10.0) -> RunningStack:
    """A url= stack: check it answers its health route, launch nothing."""
    stack = RunningStack(spec=spec, base_url=spec.url or "")
    try:
        r = httpx.get(stack.base_url + spec.health, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise StackError(f"stack at {spec.url} does not answer {spec.health}: {exc}") from None
    if r.status_code != 200:
        raise StackError(f"stack at {spec.url} answers {spec.health} with HTTP {r.status_code}")
    return stack


def launch(spec: StackSpec, model: Path | str, log_dir: Path, scenario: str = "", port: int | None = None,
           startup_timeout_s: float | None = None) -> RunningStack:
    """Start the spec's command on a free loopback port and wait until its health route says 200."""
    if not spec.launched:
        return connect(spec)
    port = port or free_port()
    if port_is_taken(port):
        raise StackError(f"stack {spec.name}: port {port} is already taken")
    fields = Placeholders(spec=spec, model=Path(model), port=port, scenario=scenario, log_dir=log_dir)
    command = [fields.fill(c) for c in spec.command]
    if command[0] == "python":
        command[0] = sys.executable
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.name}.log"
    env = {**os.environ, **fields.env, **{k: fields.fill(v) for k, v in spec.env.items()}}
    env["PYTHONUNBUFFERED"] = "1"
    ledger.reap()  # stacks a killed harness left running
    # appended: the rounds of a compare run launch each stack once a round, into one log
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        try:
            process = session.start(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise StackError(f"stack {spec.name}: cannot start {command[0]}: {exc.strerror}") from None
    stack = RunningStack(spec=spec, base_url=f"http://127.0.0.1:{port}", log_path=log_path, process=process,
                         engines=fields.engines)
    try:  # from here on, whatever stops the launch (a signal included) stops the process too
        stack.record = ledger.record(spec.name, process)
        _wait_healthy(stack, startup_timeout_s or spec.startup_timeout_s)
    except BaseException:
        stack.stop(grace_s=5)
        raise
    return stack


def _wait_healthy(stack: RunningStack, timeout_s: float) -> None:
    started = time.monotonic()
    deadline = started + timeout_s
    url = stack.base_url + stack.spec.health
    with httpx.Client(timeout=2.0) as client:
        while True:
            dead = stack.death()
            if dead:
                raise StackError(f"{dead}\n(the stack died before it became healthy)")
            try:
                if client.get(url).status_code == 200:
                    stack.started_s = time.monotonic() - started
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                last = tail(stack.log_path)
                raise StackError(
                    f"stack {stack.spec.name} not healthy at {url} after {timeout_s:.0f} s ({cause(last)}); "
                    f"last lines of {stack.log_path}:\n{last}"
                )
            time.sleep(0.25)


@contextmanager
def launch_on(stack_name: str, scenario_name: str, profile: str, scenarios_dir: Path, log_dir: Path):
    """A named stack launched on the model a scenario's profile names; yields (stack, model folder)."""
    from harness.assets import ensure_model
    from harness.errors import HarnessError
    from harness.scenario import find_scenarios
    from harness.stack import resolve_stack

    scenario = next((s for s in find_scenarios(scenarios_dir) if s.name == scenario_name), None)
    if scenario is None:
        raise HarnessError(f"no scenario named {scenario_name!r}")
    model = ensure_model(scenario.profile(profile)["model"])
    with launch(resolve_stack(stack_name), model, log_dir, scenario=scenario.name) as stack:
        yield stack, model
