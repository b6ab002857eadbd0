"""Building a C++ extension so that a start killed mid-build never blocks the next one.

torch's JIT build takes a lock file (`lock`) in the extension's build folder and waits, printing
nothing, for as long as that file exists; a process killed while building (Ctrl-C, a harness's
SIGTERM, a startup timeout) leaves it behind, and every later start hangs until its health
deadline. Here each build first takes an flock of its own beside it: the kernel drops an flock
with its owner, so whoever holds it knows that no live process of ours is building, and that a
`lock` still there was left by a dead one.

The folder is per environment (torch keeps one per extension name for every environment with the
same torch, and two environments then rebuild each other's build in turn) and per CPU: the flags
are `-march=native`, and torch rebuilds only when the sources or the flags' text change, so an
environment moved to a CPU without the first one's instructions (AMX, AVX-512 BF16: an image built
on one host, a home folder shared by several) would load a build that dies on an illegal instruction.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import sys
from pathlib import Path

from skills.cpu_kernels.cpu import flags_digest

log = logging.getLogger(__name__)
CFLAGS = ["-O3", "-march=native", "-fopenmp"]
LDFLAGS = ["-fopenmp"]


def build_dir(name: str) -> Path:
    """This environment's build folder for extension `name` (under TORCH_EXTENSIONS_DIR where set)."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    env = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    folder = root / f"servebench-{env}-cpu{flags_digest()}" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def load(name: str, sources: list[Path]):
    """The extension, built here if its sources or flags changed since the last build."""
    from torch.utils import cpp_extension

    folder = build_dir(name)
    with open(folder / "servebench.lock", "w") as guard:
        try:
            fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s: another process is building these kernels; waiting for it", name)
            fcntl.flock(guard, fcntl.LOCK_EX)
        baton = folder / "lock"
        if baton.exists():
            log.warning("%s: removing the build lock of a process killed while it built these kernels", name)
            baton.unlink()
        if not (folder / f"{name}.so").exists():
            log.warning("%s: building the C++ kernels (once per environment, about a minute)", name)
        return cpp_extension.load(name, [str(s) for s in sources], extra_cflags=CFLAGS, extra_ldflags=LDFLAGS,
                                  build_directory=str(folder))
