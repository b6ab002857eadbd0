"""`python -m harness matrix`: settings x stacks fanned over a Ray cluster's machines. The plan (which
job runs where) is checked alone; the jobs run on a real local Ray instance: one a machine at a
time, a hung one stopped at its deadline with what it wrote, and a real compare run whose rows
come back to the results folder."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import procfs
from harness.cluster import SLOT, Node, run_job
from harness.errors import HarnessError
from harness.matrix import in_scope, plan, same_commit
from harness.row import read_rows
from harness.scenario import find_scenarios

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = find_scenarios(REPO / "scenarios")
EPYC = Node("n1", "10.0.0.1", "AMD EPYC", 2, "a" * 40, False)
XEON = Node("n2", "10.0.0.2", "Intel Xeon", 2, "a" * 40, False)


def test_each_setting_gets_the_stacks_scoped_to_it_on_every_machine():
    jobs, skipped = plan(SCENARIOS, ["engine-a@A", "vllm@A+B", "hf-reference"], ["hf-reference", "vllm"], [EPYC, XEON])
    assert skipped == []
    assert len(jobs) == 2 * len(SCENARIOS) and {j.node for j in jobs} == {EPYC, XEON}
    by = {(j.setting, j.node.node_id): j for j in jobs}
    assert by["A", "n1"].stacks == ("engine-a@A", "vllm@A+B", "hf-reference")
    assert by["B", "n2"].stacks == ("vllm@A+B", "hf-reference") and by["B", "n2"].baselines == ("hf-reference", "vllm")
    assert by["C", "n1"].stacks == ("hf-reference",) and by["C", "n1"].baselines == ("hf-reference",)
    assert len({j.run_id for j in jobs}) == len(jobs)  # a run per job: a table compares one machine's run
    argv = by["A", "n1"].argv("tiny", 3, ["-k", "conc-1"])
    assert argv[:3] == ["-m", "harness", "compare"] and "{results_dir}" in argv
    assert argv[argv.index("--") + 1:] == ["--no-leaderboard", "-k", "conc-1"]


def test_a_setting_no_stack_is_scoped_to_is_left_out_and_said():
    jobs, skipped = plan(SCENARIOS, ["engine-a@A"], [], None)
    assert [j.setting for j in jobs] == ["A"] and jobs[0].node is None
    assert len(skipped) == len(SCENARIOS) - 1 and all("no stack is scoped" in s for s in skipped)
    assert in_scope("engine-b@A+B", "B") and not in_scope("engine-b@A+B", "C") and in_scope("vllm", "G")


def test_a_baseline_that_is_not_a_stack_is_refused():
    with pytest.raises(HarnessError, match="--baseline vllm: not one of the stacks"):
        plan(SCENARIOS, ["engine-a@A"], ["vllm"], None)


def test_a_machine_at_another_commit_gets_no_job():
    other = Node("n3", "10.0.0.3", "AMD EPYC", 2, "b" * 40, True)
    kept, refused = same_commit([EPYC, other], "a" * 40, any_commit=False)
    assert kept == [EPYC] and len(refused) == 1 and "bbbbbbbbbbbb" in refused[0] and "--any-commit" in refused[0]
    assert same_commit([EPYC, other], "a" * 40, any_commit=True) == ([EPYC, other], [])


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, resources={SLOT: 1}, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


SLEEPER = """import json, pathlib, sys, time
out = pathlib.Path(sys.argv[1]) / "runs" / sys.argv[2]
out.mkdir(parents=True)
(out / "span.json").write_text(json.dumps([time.time()]))
time.sleep(float(sys.argv[3]))
"""


def _spans(ray, resources: dict) -> list[tuple[float, float]]:
    task = ray.remote(run_job).options(num_cpus=0, resources=resources, max_retries=0)
    refs = [task.remote(["-c", SLEEPER, "{results_dir}", f"r{i}", "1.5"], f"r{i}", 60) for i in range(2)]
    results = ray.get(refs)
    assert all(r.exit_code == 0 and "span.json" in r.files for r in results)
    return sorted((r.started, r.ended) for r in results)


@pytest.mark.slow
def test_a_machine_runs_one_job_at_a_time(ray_local):
    (_, end0), (start1, _) = _spans(ray_local, {SLOT: 1})
    assert start1 >= end0, "two jobs measured on the same cores at once"
    # the check can fail: without the slot, Ray runs both at once on this machine
    (_, end0), (start1, _) = _spans(ray_local, {})
    assert start1 < end0


HANGER = """import pathlib, subprocess, sys, time
out = pathlib.Path(sys.argv[1]) / "runs" / "hung"
out.mkdir(parents=True)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
(out / "row.json").write_text(str(child.pid))
print("measured one cell", flush=True)
time.sleep(300)
"""


@pytest.mark.slow
def test_a_hung_job_is_stopped_at_its_deadline_with_what_it_wrote_and_nothing_left_running(ray_local):
    task = ray_local.remote(run_job).options(num_cpus=0, resources={SLOT: 1}, max_retries=0)
    t0 = time.monotonic()
    result = ray_local.get(task.remote(["-c", HANGER, "{results_dir}"], "hung", 3.0))
    assert result.exit_code is None and time.monotonic() - t0 < 3.0 + 35  # its deadline, then the stop's grace
    assert b"measured one cell" in result.files["logs/matrix-job.log"] and "measured one cell" in result.output_tail
    child = int(result.files["row.json"])
    deadline = time.monotonic() + 10
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(child), "the job's own child outlived its deadline"


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed child reparented to init lingers there until init reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def matrix(tmp_path: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "matrix", "--results-dir", str(tmp_path), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_a_matrix_job_is_a_real_compare_run_whose_rows_come_back(tmp_path):
    pytest.importorskip("ray")
    out = matrix(tmp_path, "--scenario", "standard_serving", "--stack", "hf-reference", "--stack", "engine-b@B",
                 "--profile", "smoke", "--", "-k", "accuracy")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = read_rows(tmp_path)
    assert [(r.stack, r.kind, r.status) for r in rows] == [("hf-reference", "accuracy", "ok")]
    run = tmp_path / "runs" / rows[0].run_id
    assert json.loads((run / "compare.json").read_text())["stacks"] == ["hf-reference"]  # engine-b: B only
    assert (run / "logs" / "matrix-job.log").read_text().strip()
    assert (tmp_path / "LEADERBOARD.md").is_file() and rows[0].machine["cpu"]
    assert "ok" in out.stdout and "Traceback" not in out.stdout + out.stderr


@pytest.mark.slow
def test_a_job_that_errors_and_a_resource_no_machine_has_are_one_line_each(tmp_path):
    pytest.importorskip("ray")
    out = matrix(tmp_path, "--scenario", "standard_serving", "--stack", "hf-reference", "--profile", "smoke",
                 "--", "--no-such-pytest-option")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: 1 of 1 jobs did not finish: A on ")
    assert "error" in out.stdout and "exit code 2" in out.stdout
    out = matrix(tmp_path, "--scenario", "standard_serving", "--stack", "hf-reference", "--resources", '{"GPU": 1}')
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == (
        "error: no machine with a slot offers {'GPU': 1.0}")


def test_a_wrong_stack_is_one_line_before_ray_starts(tmp_path):
    out = matrix(tmp_path, "--stack", "no-such-stack", timeout=60)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
    assert "Ray" not in out.stdout + out.stderr


@pytest.mark.slow
def test_a_stopped_matrix_stops_the_stacks_its_jobs_launched(tmp_path):
    pytest.importorskip("ray")
    ttft = f"41.{os.getpid()}"  # this test's stack, told apart from any other delay server
    spec = tmp_path / "marked.yaml"
    spec.write_text(json.dumps({"name": "marked", "command": ["python", "tests/stacks/delay_server.py", "--ttft-ms",
                                                              ttft, "--port", "{port}"],
                                "startup_timeout_s": 30, "supports": ["completions"]}))
    marker = f"delay_server.py --ttft-ms {ttft} "
    proc = subprocess.Popen([sys.executable, "-m", "harness", "matrix", "--scenario", "standard_serving", "--stack",
                             str(spec), "--profile", "smoke", "--results-dir", str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not procfs.naming(marker) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert procfs.naming(marker), "the job's stack never started"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "jobs cancelled on their machines" in out, out[-2000:]
        assert "Traceback" not in out, out[-3000:]
        assert not procfs.naming(marker), "the stack outlived the matrix"
    finally:
        proc.kill()
        for pid in procfs.naming(marker):
            os.kill(pid, signal.SIGKILL)
