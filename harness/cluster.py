"""The machines of a Ray cluster as the matrix sees them, and a job run on one of them.

Each machine offers one `servebench` slot (`ray start --resources '{"servebench": 1}'`) and every
job takes it: two measurements on the same cores would each measure the other, so a machine runs
one job at a time whatever its CPU count. A job is a harness command run on the machine in its own
checkout (its environments, models and built kernels are that machine's, from scripts/setup.sh),
in a session of its own: a deadline or a cancel stops it and the stacks it launched, and the files
it wrote so far come back with the verdict.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import session
from harness.errors import HarnessError

SLOT = "servebench"  # the custom resource a machine offers once and a job takes whole
MAX_FILE_BYTES = 64 << 20  # a larger file (a runaway server log) stays on its machine, named in the verdict
TAIL_CHARS = 4000
# A job's first process: asks Linux for SIGTERM when the Ray worker that started it dies (its machine's
# Ray daemon killed, the worker lost), so the harness tears its stacks down instead of measuring on
# beside the next job, then becomes the job (the request outlives exec). Elsewhere it only execs.
STOP_WITH_PARENT = """import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit("the Ray worker that started this job is gone")
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


@dataclass(frozen=True)
class Node:
    """A machine that offers a slot: Ray's id and address, and what it said of itself."""

    node_id: str
    address: str
    cpu: str = "?"
    cores: int = 0
    sha: str | None = None
    dirty: bool | None = None

    @property
    def label(self) -> str:
        return f"{self.cpu} ({self.cores} cores) at {self.address}"


@dataclass(frozen=True)
class JobResult:
    """What a job gave back: its exit code (None: stopped at its deadline), its output's tail, the
    files under its run folder (relative path -> bytes), and when it ran on the machine's clock."""

    exit_code: int | None
    output_tail: str
    files: dict[str, bytes]
    started: float
    ended: float
    node: Node  # where it ran (with --on any, the driver learns it here)
    left_behind: list[str] = field(default_factory=list)  # files too large to bring back


def connect(address: str | None):
    """Ray, joined to the cluster at `address` ('auto': the one this machine is part of), or a local
    instance whose only machine is this one, with its slot."""
    try:
        import ray
    except ImportError:
        raise HarnessError("the matrix runs on Ray, which is not installed here: pip install 'ray>=2.40'") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a benchmark machine phones no one
    kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    # Ray's driver puts its own SIGTERM handler in (it exits at once): the harness's, which unwinds
    # as Ctrl-C does and so cancels the jobs, goes back in
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(address="local", resources={SLOT: 1}, **kwargs)  # new, even where a cluster runs here
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise HarnessError(f"cannot join the Ray cluster at {address or 'a new local instance'}: "
                           f"{str(exc).splitlines()[0]}") from None
    finally:
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
    return ray


def slot_nodes(ray) -> list[Node]:
    """The live machines with a slot, as Ray lists them (before they describe themselves)."""
    return [Node(n["NodeID"], n.get("NodeManagerAddress", "?")) for n in ray.nodes()
            if n.get("Alive") and n.get("Resources", {}).get(SLOT, 0) >= 1]


def describe() -> Node:
    """Run on a machine (in a Ray worker): the machine, with its CPU, cores and its checkout's commit."""
    import ray

    from harness import machine

    m, c = machine.machine(), machine.commit()
    return Node(ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), m["cpu"], m["cores"],
                c["sha"], c["dirty"])


def run_job(argv: list[str], run_id: str, deadline_s: float) -> JobResult:
    """Run on a machine: `python <argv>` in its checkout, `{results_dir}` in argv standing for a
    fresh folder; stopped (SIGTERM to its session, then SIGKILL) at its deadline or on a cancel.
    Returns the files it wrote under `<results_dir>/runs/<run_id>/`, and its output as logs/matrix-job.log."""
    from harness.stack import REPO_ROOT

    with tempfile.TemporaryDirectory(prefix="servebench-job-") as tmp:
        cmd = [sys.executable, "-c", STOP_WITH_PARENT, str(os.getpid()), *(a.replace("{results_dir}", tmp) for a in argv)]
        log = Path(tmp) / "job.log"
        started = time.time()
        with open(log, "wb") as out:
            proc = session.start(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                code: int | None = proc.wait(timeout=deadline_s)
            except subprocess.TimeoutExpired:
                session.stop(proc)
                code = None
            except BaseException:  # a cancel from the driver: stop what it launched, then go
                session.stop(proc)
                raise
        ended = time.time()
        folder = Path(tmp) / "runs" / run_id
        tail = log.read_bytes()[-TAIL_CHARS:].decode(errors="replace")
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        log.replace(folder / "logs" / "matrix-job.log")  # beside the stacks' logs, which git ignores
        files, left = _collect(folder)
    return JobResult(code, tail, files, started, ended, describe(), left)


def _collect(folder: Path) -> tuple[dict[str, bytes], list[str]]:
    files: dict[str, bytes] = {}
    left: list[str] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []:
        rel = path.relative_to(folder).as_posix()
        if path.stat().st_size > MAX_FILE_BYTES:
            left.append(f"{rel} ({path.stat().st_size >> 20} MiB)")
        else:
            files[rel] = path.read_bytes()
    return files, left
