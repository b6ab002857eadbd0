"""A start killed while it builds C++ kernels leaves torch's build lock behind; the next start
must still build (skills/cpu_kernels/build.py). A one-function extension stands in for the
kernels: the same torch build, in seconds."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE = """#include <pybind11/pybind11.h>
int answer() { return 42; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("answer", &answer); }
"""
BUILD = ("import logging, sys; logging.basicConfig(level=logging.INFO); from pathlib import Path; "
         "from skills.cpu_kernels.build import load; print('answer', load('sb_build_probe', [Path(sys.argv[1])]).answer())")


def start(tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    return subprocess.Popen([sys.executable, "-c", BUILD, str(tmp_path / "probe.cpp")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_a_build_killed_midway_leaves_its_lock_and_the_next_start_builds(tmp_path):
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler: the engines run their torch path")
    (tmp_path / "probe.cpp").write_text(SOURCE)
    first = start(tmp_path)
    deadline = time.monotonic() + 120
    batons = []
    while not batons and first.poll() is None and time.monotonic() < deadline:
        batons = list((tmp_path / "ext").glob("*/sb_build_probe/lock"))
        time.sleep(0.02)
    assert batons, f"the build never took torch's lock: {first.communicate()[0][-2000:]}"
    os.killpg(first.pid, signal.SIGKILL)  # the start and its compiler, mid-build
    first.wait()
    assert batons[0].exists()  # what made every later start hang
    second = start(tmp_path)
    out, _ = second.communicate(timeout=180)
    assert second.returncode == 0 and "answer 42" in out, out[-3000:]
    assert "removing the build lock of a process killed" in out, out[-3000:]
    again = start(tmp_path)  # built: no message, no rebuild
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0 and "answer 42" in out and "building" not in out, out[-3000:]


def test_a_build_is_kept_per_cpu_so_a_moved_environment_never_loads_another_cpu_s_build(tmp_path, monkeypatch):
    """`-march=native`: torch reuses a build whose sources and flags' text are unchanged, so the
    CPU's own flags must pick the folder (an AMX build on an EPYC dies on an illegal instruction)."""
    from skills.cpu_kernels import build, cpu

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}))
    on_xeon = build.build_dir("probe")
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    on_epyc = build.build_dir("probe")
    assert on_xeon != on_epyc and on_xeon.name == on_epyc.name == "probe"
    assert build.build_dir("probe") == on_epyc  # the same CPU finds its build again
