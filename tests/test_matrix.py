"""`python -m harness matrix`: settings x stacks fanned over a Ray cluster's machines. The plan (which
job runs where) is checked alone; the jobs run on a real Ray cluster of two machines (two raylets on
this host): each pinned job on its machine, one a machine at a time, a hung one stopped at its
deadline with what it wrote; and, through the command line, a real compare run whose rows come back
to the results folder, a failing job, and a stopped matrix whose job's stack is stopped too."""
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from harness import machine as host
from harness import procfs
from harness.cluster import SLOT, Node, connect, run_job
from harness.errors import HarnessError
from harness.matrix import Job, _headline, _machines, _run, in_scope, plan, same_commit
from harness.row import read_rows
from harness.scenario import find_scenarios
from tests.doubles import marked_delay_stack

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
def two_machines():
    """A Ray cluster of two machines, each with its slot (two raylets on this host, as Ray's own tests run)."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {SLOT: 1}})
    cluster.add_node(num_cpus=1, resources={SLOT: 1})
    ray = connect(cluster.address)
    try:
        yield ray, _machines(ray, {}, False, Console(file=io.StringIO())), cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


SLEEPER = """import json, pathlib, sys, time
out = pathlib.Path(sys.argv[1]) / "runs" / sys.argv[2]
out.mkdir(parents=True)
(out / "row.json").write_text(json.dumps({"slept": float(sys.argv[3])}))
time.sleep(float(sys.argv[3]))
"""


@dataclass(frozen=True)
class SleepJob(Job):
    """A job that sleeps instead of scoring: the driver's plumbing without a setting's minutes."""

    def argv(self, profile: str, rounds: int, extra: list[str]) -> list[str]:
        return ["-c", SLEEPER, "{results_dir}", self.run_id, extra[0] if extra else "1.5"]


def _overlap(a, b) -> bool:
    return a.started < b.ended and b.started < a.ended


@pytest.mark.slow
def test_each_machine_runs_its_own_jobs_one_at_a_time_and_the_rows_come_back(two_machines, tmp_path):
    ray, nodes, _ = two_machines
    assert len(nodes) == 2 and all(n.sha == host.commit()["sha"] for n in nodes)
    jobs = [SleepJob("standard_serving", "A", ("x",), (), n, f"run-{i}-{n.node_id[:6]}") for n in nodes for i in (0, 1)]
    outcomes = _run(ray, jobs, nodes, "tiny", 1, {}, 60, [], tmp_path, Console(file=io.StringIO()))
    assert sorted(o.status for o in outcomes) == ["ok"] * 4 and all(o.node == o.job.node for o in outcomes)
    assert all(json.loads((tmp_path / "runs" / j.run_id / "row.json").read_text()) == {"slept": 1.5} for j in jobs)
    assert all((tmp_path / "runs" / j.run_id / "logs" / "matrix-job.log").is_file() for j in jobs)
    spans = {o.job.run_id: o for o in outcomes}
    for n in nodes:  # never two measurements at once on one machine; the two machines work side by side
        first, second = (spans[f"run-{i}-{n.node_id[:6]}"] for i in (0, 1))
        assert not _overlap(first, second), "two jobs measured on the same cores at once"
    assert _overlap(spans[f"run-0-{nodes[0].node_id[:6]}"], spans[f"run-0-{nodes[1].node_id[:6]}"]) or \
        _overlap(spans[f"run-0-{nodes[0].node_id[:6]}"], spans[f"run-1-{nodes[1].node_id[:6]}"])


@pytest.mark.slow
def test_on_any_each_job_goes_to_a_free_machine_of_those_kept_and_never_to_another(two_machines, tmp_path):
    ray, nodes, _ = two_machines
    jobs = [SleepJob("standard_serving", "A", ("x",), (), None, f"any-{i}") for i in range(4)]
    outcomes = _run(ray, jobs, nodes, "tiny", 1, {}, 60, ["1"], tmp_path, Console(file=io.StringIO()))
    assert sorted(o.status for o in outcomes) == ["ok"] * 4
    on = {n.node_id: [o for o in outcomes if o.node.node_id == n.node_id] for n in nodes}
    assert sorted(len(v) for v in on.values()) == [2, 2]  # both machines worked
    assert all(not _overlap(a, b) for v in on.values() for a, b in itertools.pairwise(v))
    # a machine left out (another commit) gets none, though its slot is free
    jobs = [SleepJob("standard_serving", "A", ("x",), (), None, f"kept-{i}") for i in range(2)]
    outcomes = _run(ray, jobs, nodes[:1], "tiny", 1, {}, 60, ["0.5"], tmp_path, Console(file=io.StringIO()))
    assert [o.node for o in outcomes] == [nodes[0], nodes[0]] and not _overlap(*outcomes)


@pytest.mark.slow
def test_without_the_slot_two_jobs_would_share_a_machine(two_machines):
    """The check above can fail: the same two jobs pinned to one machine without the slot overlap."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray, nodes, _ = two_machines
    task = ray.remote(run_job).options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        nodes[0].node_id, soft=False))
    a, b = ray.get([task.remote(["-c", SLEEPER, "{results_dir}", f"r{i}", "1.5"], f"r{i}", 60) for i in (0, 1)])
    assert a.exit_code == b.exit_code == 0 and _overlap(a, b)


HANGER = """import pathlib, subprocess, sys, time
out = pathlib.Path(sys.argv[1]) / "runs" / "hung"
out.mkdir(parents=True)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
(out / "row.json").write_text(str(child.pid))
print("measured one cell", flush=True)
time.sleep(300)
"""


@pytest.mark.slow
def test_a_hung_job_is_stopped_at_its_deadline_with_what_it_wrote_and_nothing_left_running(two_machines):
    ray, _, _ = two_machines
    task = ray.remote(run_job).options(num_cpus=0, resources={SLOT: 1}, max_retries=0)
    t0 = time.monotonic()
    result = ray.get(task.remote(["-c", HANGER, "{results_dir}"], "hung", 3.0))
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
    spec, marker = marked_delay_stack(tmp_path, f"41.{os.getpid()}")
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


def test_the_matrix_headline_is_the_first_stack_against_each_baseline_over_the_load_points():
    off, ref = "engine-c.prefix_caching-off", "hf-reference"
    ratios = [{"stack": "engine-c", "baseline": off, "label": "tail=127", "value": 4.97},
              {"stack": "engine-c", "baseline": ref, "label": "tail=127", "value": 21.81},
              {"stack": "engine-c", "baseline": off, "label": "tail=241", "value": 3.35},
              {"stack": off, "baseline": ref, "label": "tail=241", "value": 4.2},
              {"stack": "engine-c", "baseline": ref, "label": "tail=241", "value": None}]  # a cell that failed
    summary = json.dumps({"ratios": ratios}).encode()
    job = Job("hybrid_prefix_caching", "C", ("engine-c@C", f"{off}@C", ref), (), None, "run")
    assert _headline(summary, job) == f"engine-c 3.35-4.97x {off}, engine-c 21.81x {ref}"
    assert _headline(None, job) == "" and _headline(b"{not json", job) == ""


PIDFILE_SLEEPER = """import pathlib, sys, time
pathlib.Path(sys.argv[1]).write_text(str(__import__("os").getpid()))
time.sleep(120)
"""


@pytest.mark.slow
def test_a_job_whose_machine_is_lost_is_reported_lost_and_stops(two_machines, tmp_path):
    ray, _, cluster = two_machines
    doomed = cluster.add_node(num_cpus=1, resources={SLOT: 1, "doomed": 1})  # a third machine, for this job alone
    cluster.wait_for_nodes()
    node = next(n for n in _machines(ray, {"doomed": 1}, False, Console(file=io.StringIO())))
    pidfile = tmp_path / "pid"

    class Lost(SleepJob):
        def argv(self, profile, rounds, extra):
            return ["-c", PIDFILE_SLEEPER, str(pidfile)]

    def kill_the_machine():
        deadline = time.monotonic() + 60
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        cluster.remove_node(doomed)

    threading.Thread(target=kill_the_machine, daemon=True).start()
    t0 = time.monotonic()
    (outcome,) = _run(ray, [Lost("standard_serving", "A", ("x",), (), node, "lost")], [node], "tiny", 1, {}, 600,
                      [], tmp_path, Console(file=io.StringIO()))
    assert outcome.status == "lost" and outcome.node == node and outcome.detail, outcome
    assert time.monotonic() - t0 < 90, "the loss took as long as the job would have"
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 15
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(pid), "the lost job's harness ran on with no one to report to"
