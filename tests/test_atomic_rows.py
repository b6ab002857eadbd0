"""Rows and their records are written so that a writer killed at any moment leaves each file whole
(the old content or the new), never a torn one: a writer is killed with SIGKILL at random moments,
again and again, and every file it left is read back."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.records import read_records
from harness.row import read_rows

REPO = Path(__file__).resolve().parent.parent
# Rewrites the same row (20,000 metrics) and its records file as fast as it can; "torn" writes the
# row as a plain json.dump into the file (the double that shows the check can fail).
WRITER = """
import json, sys
from dataclasses import asdict
from pathlib import Path
from harness.records import Event, RequestRecord, write_records
from harness.row import ResultRow
out, torn, i = Path(sys.argv[1]), sys.argv[2] == "torn", 0
records = [RequestRecord(index=j, events=[Event(0.1 * k, 1, "x" * 40) for k in range(200)]) for j in range(20)]
while True:
    i += 1
    row = ResultRow(run_id="kill", stack="writer", setting="A", scenario="s", profile="tiny", kind="performance",
                    status="ok", metrics={"i": i, **{f"m{k}": k for k in range(20_000)}})
    write_records(row.path_in(out).with_suffix(".records.jsonl"), records)
    if torn:
        row.path_in(out).parent.mkdir(parents=True, exist_ok=True)
        with open(row.path_in(out), "w") as f:
            json.dump(asdict(row), f)
    else:
        row.write(out)
"""


def kill_loop(tmp_path: Path, mode: str, kills: int = 12) -> tuple[list[str], set[int]]:
    """Kill a writer at random moments, `kills` times; (what reading its files back found wrong, the
    rewrites seen)."""
    rng, wrong, seen = random.Random(7), [], set()
    for _ in range(kills):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), mode], cwd=REPO)
        time.sleep(0.8 + rng.random() * 0.5)  # past the imports, into the writing loop
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        rows = read_rows(tmp_path, warn=wrong.append)
        for row in rows:
            seen.add(row.metrics["i"])
            records = read_records(row.path_in(tmp_path).with_suffix(".records.jsonl"))
            if len(records) != 20 or any(len(r.events) != 200 for r in records):
                wrong.append(f"records of row {row.metrics['i']} cut short")
        for path in tmp_path.rglob("*.json*"):
            if path.name.startswith("."):  # a kill mid-write leaves only a hidden temporary
                continue
            try:
                text = path.read_text()
                [json.loads(line) for line in text.splitlines()] if path.suffix == ".jsonl" else json.loads(text)
            except ValueError as exc:
                wrong.append(f"{path.name}: {exc}")
    return wrong, seen


def test_a_writer_killed_at_random_moments_leaves_every_file_whole(tmp_path):
    wrong, seen = kill_loop(tmp_path, "atomic")
    assert not wrong, wrong[:5]
    assert len(seen) > 1  # the writer got through several rewrites between kills


def test_the_check_catches_a_writer_that_writes_in_place(tmp_path):
    wrong, _ = kill_loop(tmp_path, "torn")
    assert wrong, "no kill landed mid-write: the check above proves nothing"
