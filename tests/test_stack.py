"""Stack specs resolve or fail in one clear line; the launcher starts, watches and tears stacks down."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.errors import HarnessError, StackError
from harness.launcher import free_port, launch
from harness.stack import REPO_ROOT, load_spec, registered, resolve_stack

DELAY = Path(__file__).parent / "stacks" / "delay.yaml"


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may linger where init does not reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_resolve_registered_name_path_and_url():
    assert resolve_stack("hf-reference").name == "hf-reference"
    assert resolve_stack(str(DELAY)).name == "delay"
    url = resolve_stack("url=http://127.0.0.1:9/")
    assert url.url == "http://127.0.0.1:9" and not url.launched
    assert url.supports == ("completions", "chat")  # not taken to support everything
    declared = resolve_stack("url=http://127.0.0.1:9,supports=chat+logprobs", frozenset({"chat", "logprobs"}))
    assert declared.url == "http://127.0.0.1:9" and declared.supports == ("chat", "logprobs")


def test_the_supports_vocabulary_comes_from_the_scenarios():
    from harness.scenario import find_scenarios, vocabulary

    words = vocabulary(find_scenarios(REPO_ROOT / "scenarios"))
    assert {"completions", "chat", "logprobs", "prediction"} <= words
    for spec in registered().values():  # every shipped spec speaks the settings' words
        load_spec(spec, words)
    with pytest.raises(HarnessError, match="unknown supports"):
        resolve_stack("url=http://127.0.0.1:9,supports=chat+telepathy", words)


@pytest.mark.parametrize("arg, message", [
    ("no-such-stack", "unknown stack"),
    ("missing.yaml", "no such spec file"),
    ("url=127.0.0.1:80", "must start with http"),
    ("url=http://127.0.0.1:80,suports=chat", "after the url comes ,supports="),
])
def test_bad_stack_arguments_are_one_line(arg, message):
    with pytest.raises(HarnessError, match=message) as info:
        resolve_stack(arg)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("name: x\n", "missing command"),
    ("name: x\ncommand: []\n", "non-empty list"),
    ("name: x\ncommand: [a]\nsupports: [telepathy]\n", "unknown supports"),
    ("name: [x\n", "not valid YAML"),
    ("- a\n", "must be a mapping"),
])
def test_bad_specs_are_one_line(tmp_path, text, message):
    with pytest.raises(HarnessError, match=message) as info:
        load_spec(write(tmp_path, text), frozenset({"completions"}))
    assert "\n" not in str(info.value)


def test_launch_health_and_whole_group_teardown(tmp_path):
    # The stack forks a child into its own process group; teardown must take the child too.
    script = write(tmp_path, "import subprocess, sys, http.server, functools\n"
                   "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
                   "open(sys.argv[2], 'w').write(str(child.pid))\n"
                   "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()\n",
                   "srv.py")
    pidfile = tmp_path / "child.pid"
    spec = load_spec(write(tmp_path, f"name: forker\ncommand: [python, {script}, '{{port}}', {pidfile}]\nhealth: /\n"
                                     "startup_timeout_s: 20\n"))
    stack = launch(spec, "unused", tmp_path / "logs")
    assert stack.death() is None and stack.started_s > 0
    child = int(pidfile.read_text())
    stack.stop()
    time.sleep(0.2)
    assert stack.process.poll() is not None
    assert not running(child)


def test_stack_that_dies_at_startup_reports_its_log(tmp_path):
    spec = load_spec(write(tmp_path, "name: dies\ncommand: [python, -c, \"import sys; print('bad weights'); sys.exit(4)\"]\n"))
    started = time.monotonic()
    with pytest.raises(StackError, match="exited with code 4") as info:
        launch(spec, "m", tmp_path / "logs")
    assert "bad weights" in str(info.value) and time.monotonic() - started < 10


def test_the_error_line_of_a_traceback_is_the_reason():
    from harness.launcher import cause

    log = "INFO starting\nTraceback (most recent call last):\n  File x\npydantic_core.ValidationError: max_model_len too big\n  see docs"
    assert cause(log) == "pydantic_core.ValidationError: max_model_len too big"
    assert cause("all fine\n") == "see the log"


def test_stack_that_never_gets_healthy_hits_the_deadline(tmp_path):
    spec = load_spec(write(tmp_path, "name: sleepy\ncommand: [python, -c, \"import time; print('loading'); time.sleep(60)\"]\n"
                                     "startup_timeout_s: 2\n"))
    started = time.monotonic()
    with pytest.raises(StackError, match="not healthy .* after 2 s") as info:
        launch(spec, "m", tmp_path / "logs")
    assert "loading" in str(info.value) and time.monotonic() - started < 8


def test_port_already_taken_is_reported(tmp_path):
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        with pytest.raises(StackError, match=f"port {port} is already taken"):
            launch(load_spec(DELAY), "m", tmp_path / "logs", port=port)


def test_missing_executable_is_reported(tmp_path):
    spec = load_spec(write(tmp_path, "name: ghost\ncommand: [/no/such/engine, --port, '{port}']\n"))
    with pytest.raises(StackError, match="cannot start /no/such/engine"):
        launch(spec, "m", tmp_path / "logs")


def test_cli_errors_are_one_line_without_traceback():
    repo = Path(__file__).resolve().parent.parent
    for args in (["-m", "pytest", "scenarios", "--stack", "nope", "-q"],
                 ["-m", "pytest", "scenarios", "--profile", "huge", "-q"]):
        out = subprocess.run([sys.executable, *args], cwd=repo, capture_output=True, text=True, timeout=120)
        text = out.stdout + out.stderr
        assert out.returncode != 0 and "Traceback" not in text, text
        assert ("unknown stack" in text) or ("unknown profile 'huge'" in text), text
