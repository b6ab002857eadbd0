"""`pytest scenarios/` as a user runs it: a server started by hand, a wrong stack, a stack that crashes."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from harness.launcher import free_port
from harness.row import read_rows

REPO = Path(__file__).resolve().parent.parent
DELAY = [sys.executable, "tests/stacks/delay_server.py", "--ttft-ms", "50", "--token-ms", "5", "--tokens-per-chunk", "2"]
pytestmark = pytest.mark.slow


def score(tmp_path, *args, timeout=400):
    cmd = [sys.executable, "-m", "pytest", "scenarios/test_standard_serving.py", "-p", "no:cacheprovider", "-q",
           "--results-dir", str(tmp_path), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def hand_started_server():
    port = free_port()
    proc = subprocess.Popen([*DELAY, "--port", str(port)], cwd=REPO, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def test_url_stack_is_scored_and_a_wrong_stack_fails_accuracy(hand_started_server, tmp_path):
    out = score(tmp_path, "--stack", f"url={hand_started_server},supports=completions+chat+logprobs",
                "-k", "accuracy or rate-inf")
    text = out.stdout + out.stderr
    # The delay server is not SmolLM2: its accuracy must fail, and its performance cell, measured
    # in full, fails the check of its outputs against the reference.
    assert "2 failed" in text, text[-3000:]
    assert "test_accuracy" in text and "prompts fail" in text
    rows = {r.kind: r for r in read_rows(tmp_path) if r.status != "not_applicable"}
    # the sampled rate=inf point needs `sampling`, which this url stack does not declare
    assert [r.load_point["label"] for r in read_rows(tmp_path) if r.status == "not_applicable"] == [
        "rate=inf,temperature=1.0,top_p=0.9"]
    perf = rows["performance"]
    assert perf.status == "failed" and perf.metrics["completed"] == 16 and "measured outputs" in perf.error
    assert perf.outputs["verdict"] == "fail" and len(perf.outputs["judged"]) == 4
    assert perf.metrics["total_output_tokens"] == 16 * 48
    assert rows["accuracy"].accuracy["verdict"] == "fail"
    assert (tmp_path / "LEADERBOARD.md").read_text().count("FAIL") == 1


def test_a_stack_that_dies_mid_run_fails_fast_with_its_log_and_keeps_rows(tmp_path):
    spec = tmp_path / "crashing.yaml"
    # Request 28 is inside the second load point (2 warm-up + 16 measured per point).
    spec.write_text(json.dumps({"name": "crashing", "command": ["python", *DELAY[1:], "--port", "{port}", "--crash-after", "28"],
                                "startup_timeout_s": 30, "supports": ["completions", "chat", "logprobs"]}))
    started = time.monotonic()
    out = score(tmp_path, "--stack", str(spec), "-k", "performance and (conc-1 or rate-2.0)")
    text = out.stdout + out.stderr
    assert out.returncode == 1 and time.monotonic() - started < 200
    assert "exited with code 3" in text and "crashing on purpose" in text, text[-3000:]
    assert "Traceback" not in text
    rows = sorted(read_rows(tmp_path), key=lambda r: r.started_at)
    # The first cell is measured in full (its outputs, not SmolLM2's, fail their check); the second
    # keeps what it measured before the crash.
    assert [r.status for r in rows] == ["failed", "crashed"] and rows[0].outputs["verdict"] == "fail"
    assert rows[1].metrics["completed"] > 0


def test_each_stack_runs_its_cells_together_so_one_stack_is_up_at_a_time():
    out = subprocess.run([sys.executable, "-m", "pytest", "scenarios/test_standard_serving.py", "--collect-only", "-q",
                          "-p", "no:cacheprovider", "--stack", "hf-reference", "--stack", "tests/stacks/delay.yaml"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    stacks = [line.split("[", 1)[1].split("-rate")[0].split("-conc")[0].rstrip("]") for line in ids]
    assert stacks == sorted(stacks, key=["hf-reference", "delay"].index) and len(set(stacks)) == 2, ids


def collected(*args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "scenarios/", "--collect-only", "-q", "-p", "no:cacheprovider",
                          *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if "::" in line or "error" in line.lower()]


def test_a_stack_scoped_to_a_setting_is_scored_on_that_setting_only():
    ids = collected("--stack", "hf-reference", "--stack", "tests/stacks/delay.yaml@A")
    delay = [i for i in ids if "[delay" in i]
    assert delay and all(i.startswith("scenarios/test_standard_serving.py") for i in delay), ids
    assert any(i.startswith("scenarios/test_code_editing.py") and "[hf-reference" in i for i in ids), ids
    assert any("no setting Z" in line for line in collected("--stack", "hf-reference@Z")), "an unknown setting is not refused"


def test_a_stack_that_does_not_start_or_dies_in_accuracy_leaves_a_failed_row(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(json.dumps({"name": "broken", "command": ["python", "-c", "import sys; sys.exit(4)"],
                                  "startup_timeout_s": 30, "supports": ["completions", "chat", "logprobs"]}))
    dying = tmp_path / "dying.yaml"  # the accuracy pass sends 16 prompts: the third kills it
    dying.write_text(json.dumps({"name": "dying", "command": ["python", *DELAY[1:], "--port", "{port}", "--crash-after", "3"],
                                 "startup_timeout_s": 30, "supports": ["completions", "chat", "logprobs"]}))
    out = score(tmp_path, "--stack", str(broken), "--stack", str(dying), "-k", "accuracy")
    text = out.stdout + out.stderr
    assert out.returncode == 1 and "Traceback" not in text, text[-3000:]
    rows = {r.stack: r for r in read_rows(tmp_path)}
    assert rows["broken"].kind == "startup" and rows["broken"].status == "failed"
    assert "exited with code 4" in rows["broken"].error, rows["broken"].error
    assert rows["dying"].kind == "accuracy" and rows["dying"].status == "crashed"
    assert rows["dying"].accuracy["verdict"] == "fail" and "crashing on purpose" in rows["dying"].error
    board = (tmp_path / "LEADERBOARD.md").read_text()
    assert "`broken`" in board and "exited with code 4" in board and "`dying`" in board, board


def default_sigint() -> None:
    """A shell starts background jobs with SIGINT ignored, and Python then never installs its Ctrl-C
    handler: the harness under test gets SIGINT as a terminal would deliver it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_harness_stops_the_stack_it_launched(tmp_path, sig):
    marker = f"--ttft-ms {77 + sig}"  # this test's stack, told apart from any other delay server
    spec = tmp_path / "marked.yaml"
    spec.write_text(json.dumps({"name": "marked", "command": ["python", DELAY[1], *marker.split(), *DELAY[4:], "--port", "{port}"],
                                "startup_timeout_s": 30, "supports": ["completions"]}))
    running = lambda: subprocess.run(["pgrep", "-f", f"delay_server.py .*{marker}"], capture_output=True).returncode == 0  # noqa: E731
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "scenarios/test_standard_serving.py", "-p", "no:cacheprovider",
                             "-q", "--results-dir", str(tmp_path), "--stack", str(spec), "-k", "rate-2.0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    while not running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running(), "the stack never started"
    time.sleep(4)  # inside the cell: rate=2.0 sends 16 requests over ~8 s
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    deadline = time.monotonic() + 20
    while running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running(), f"the stack outlived the harness:\n{out[-2000:]}"
    # What the cell measured before the signal is kept, marked as interrupted, never ranked.
    cell = next(r for r in read_rows(tmp_path) if r.kind == "performance")
    assert cell.status == "interrupted" and cell.metrics["completed"] >= 1, (cell.status, cell.metrics)
    assert cell.metrics["failed"] >= 1 and cell.records_file
    assert "interrupted" in (tmp_path / "LEADERBOARD.md").read_text()


def test_a_hand_started_server_that_is_down_is_one_line_before_any_reference_is_drawn(tmp_path):
    started = time.monotonic()
    out = score(tmp_path, "--stack", f"url=http://127.0.0.1:{free_port()}", "-k", "accuracy", timeout=60)
    took = time.monotonic() - started
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-2000:]
    assert "does not answer /health" in out.stderr and "reference batch" not in out.stdout + out.stderr
    assert took < 30 and read_rows(tmp_path) == [], took  # the reference outputs take minutes; none were drawn
