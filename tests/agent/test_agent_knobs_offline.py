"""The offline policy: knob spaces read from the stack, a naive start, and a coordinate search."""
from __future__ import annotations


from agent import knobs, stackfiles
from agent.backends.base import ImplementContext, PlanContext, Task
from agent.backends.offline import OfflineBackend
from agent.evaluator import Measurement
from agent.objective import Objective
from agent.patch import apply
from agent.roadmap import Roadmap
from agent.rounds import CHECKPOINT, REJECTED, ROLLED_BACK, RoundRecord
from agent.signals import compute
from agent.workspace import Workspace
from agent_helpers import STANDIN, search_stack
from harness.stack import REPO_ROOT

HELP = """usage: main.py [-h] --model MODEL --port PORT [--dtype {bfloat16,float32}]
options:
  --model MODEL
  --port PORT
  --max-model-len MAX_MODEL_LEN
  --dtype {bfloat16,float32}
  --max-num-seqs MAX_NUM_SEQS
  --kv-layout {paged,slots}
  --spin SPIN           idle spin (default: 3)
  --threads THREADS     torch threads (default: every core)
  --compile             torch.compile the layers
  --omp-spincount OMP_SPINCOUNT
"""
OBJ = Objective("output_throughput", "higher", "last", 1.0, ("hf-reference",))


def test_knobs_from_help_text():
    space = {k.name: k for k in knobs.from_help(HELP)}
    assert list(space) == ["dtype", "max-num-seqs", "kv-layout", "spin", "threads"]
    assert space["dtype"].values == ("float32", "bfloat16") and space["dtype"].naive == "float32"
    assert space["max-num-seqs"].values == ("1", "2", "4", "8", "16", "32") and space["max-num-seqs"].naive == "1"
    assert space["kv-layout"].values == ("paged", "slots")
    assert space["spin"].values == ("1", "2", "3", "4", "8")
    assert space["threads"].naive == "1"


def test_command_values_and_neighbours():
    cmd = ["python", "main.py", "--port", "{port}", "--threads", "2"]
    k = knobs.Knob("threads", ("1", "2", "4"), "1")
    assert knobs.current(cmd, [k]) == {"threads": "2"}
    assert knobs.with_value(cmd, "threads", "4")[-1] == "4"
    assert knobs.with_value(cmd, "dtype", "float32")[-2:] == ["--dtype", "float32"]
    assert k.neighbours("2") == ["4", "1"]


def test_copy_relocates_the_code_path(tmp_path):
    data = stackfiles.copy(STANDIN, tmp_path / "ws", relative=False, name="x")
    assert data["command"][1] == str((tmp_path / "ws" / "main.py").resolve()) and data["name"] == "x"
    published = stackfiles.relocate(["python", str(tmp_path / "ws" / "main.py"), "{model}"], tmp_path / "ws",
                                    REPO_ROOT / "results" / "stacks" / "y", relative=True)
    assert published == ["python", "results/stacks/y/main.py", "{model}"]


def _ws(tmp_path) -> tuple[Workspace, OfflineBackend]:
    ws = Workspace.create(tmp_path / "run")
    backend = OfflineBackend()
    note = backend.start(ws, search_stack(tmp_path / "source"), "standard_serving-agent-t")
    assert "--step-overhead-ms 60" in note and "--threads 1" in note
    ws.commit("setup")
    ws.tag("round-0")
    return ws, backend


def _ctx(ws, records, n, value=10.0, profile="TTFT p50 900 ms, TPOT p50 80 ms: per-step cost dominates"):
    return PlanContext(round=n, scenario="standard_serving", profile="smoke", objective=OBJ, roadmap=Roadmap(),
                       signals=compute(records, OBJ), records=records,
                       current=Measurement(value, profile=profile), baselines={"hf-reference": 20.0}, workspace=ws)


def _config(ws) -> dict:
    data = stackfiles.load(ws.root)
    return knobs.current(data["command"], knobs.from_spec(data))


def test_naive_start_then_one_change_per_round(tmp_path):
    ws, backend = _ws(tmp_path)
    start = _config(ws)
    assert start == {"step-overhead-ms": "60", "threads": "1", "dtype": "float32"}
    records = [RoundRecord(round=0, task="start", outcome=CHECKPOINT, passed=True, metric=10.0,
                           change={"config": start}, tag="round-0")]
    planned = backend.plan(_ctx(ws, records, 1))
    assert planned.task.change["knob"] == "step-overhead-ms" and planned.task.change["to"] == "20"
    assert planned.roadmap.get("knob-step-overhead-ms").status == "in_progress"
    impl = backend.implement(ImplementContext(1, 1, planned.task, OBJ, ws))
    apply(impl.patch, ws)
    assert _config(ws)["step-overhead-ms"] == "20"
    # Kept: the search keeps pushing the same knob.
    records.append(RoundRecord(round=1, task="t", outcome=CHECKPOINT, passed=True, metric=14.0, gain=0.4,
                               change=planned.task.change, tag="round-1"))
    planned = backend.plan(_ctx(ws, records, 2, 14.0))
    assert (planned.task.change["knob"], planned.task.change["to"]) == ("step-overhead-ms", "0")
    # Rolled back (not better): pivot to the next knob; the worse value is never tried again.
    records.append(RoundRecord(round=2, task="t", outcome=ROLLED_BACK, passed=True, metric=13.9,
                               change=planned.task.change))
    planned = backend.plan(_ctx(ws, records, 3, 14.0))
    assert planned.task.change["knob"] == "threads"
    assert "not better" in planned.roadmap.get("knob-step-overhead-ms").reason


def test_a_change_that_fails_the_oracle_is_abandoned_with_a_mechanism(tmp_path):
    ws, backend = _ws(tmp_path)
    start = _config(ws)
    config = {**start, "step-overhead-ms": "0", "threads": "2"}
    change = {"knob": "dtype", "from": "float32", "to": "bfloat16", "config": {**config, "dtype": "bfloat16"}}
    records = [RoundRecord(round=0, task="start", outcome=CHECKPOINT, passed=True, metric=10.0,
                           change={"config": start}, tag="round-0"),
               RoundRecord(round=1, task="t", outcome=CHECKPOINT, passed=True, metric=30.0,
                           change={"knob": "threads", "from": "1", "to": "2", "config": config}),
               RoundRecord(round=2, task="t", outcome=REJECTED, judge="oracle: 3/4 held-out prompts diverge",
                           change=change)]
    for name, value in config.items():
        data = stackfiles.load(ws.root)
        data["command"] = knobs.with_value(data["command"], name, value)
        stackfiles.save(ws.root, data)
    planned = backend.plan(_ctx(ws, records, 3, 30.0))
    item = planned.roadmap.get("dtype=bfloat16")
    assert item.status == "abandoned" and "numerics" in item.reason
    assert planned.task.change.get("to") != "bfloat16"
    # The implementer does not retry a deterministic failure.
    task = Task("t", "p", change=change)
    assert backend.implement(ImplementContext(3, 2, task, OBJ, ws, ["oracle failed"])).gave_up


def test_the_search_stops_when_every_change_was_tried(tmp_path):
    ws, backend = _ws(tmp_path)
    start = _config(ws)
    records = [RoundRecord(round=0, task="start", outcome=CHECKPOINT, passed=True, metric=10.0,
                           change={"config": start}, tag="round-0")]
    n = 1
    while True:
        planned = backend.plan(_ctx(ws, records, n))
        if planned.task.stop:
            break
        records.append(RoundRecord(round=n, task="t", outcome=ROLLED_BACK, passed=True, metric=9.0,
                                   change=planned.task.change))
        n += 1
    assert n == 4 and "converged" in planned.task.stop  # one neighbour per knob from the naive corner
