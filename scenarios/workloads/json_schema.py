"""Setting E's workload: JSON-schema tasks, a sentinel per run in each, and the schema judge.

A task (`scenarios/data/json_schemas.jsonl`, linted by tests/test_json_schemas.py) is a schema of
one of six kinds, an instruction with a `{sentinel}` placeholder and the JSON Pointer of the string
field that must hold it. Per run each task gets its own sentinel, `sx-` and 8 hex digits drawn
from the run's salt and the task's id, so no stack can have seen the answer. The prompt shows the
schema (compact JSON) and the task; the request asks for it with
`response_format: {"type": "json_schema", "json_schema": {"name", "schema", "strict": true}}`, on
chat or completions, greedy, at most 256 tokens.

Judged per output: JSON that parses, validates against its schema (Draft 2020-12, with the format
checker), and was not cut at max_tokens (`finish_reason: length` is invalid whatever the text);
apart from that, whether the sentinel is in its field. A cell passes when at least 95% of its
outputs are valid and its sentinel rate is at least the constrained reference's.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import best_match

from harness import counters
from harness.bench import OutputCheck, OutputsVerdict
from harness.engagement import Guard
from harness.errors import HarnessError
from harness.generation import Prompt
from harness.oracle import AllOf, PromptVerdict, Verdict
from harness.reference import TOP_K, reference_outputs

POOL = Path(__file__).resolve().parent.parent / "data" / "json_schemas.jsonl"
MAX_TOKENS = 256
VALID_RATE = 0.95


@dataclass(frozen=True)
class SchemaTask:
    id: str
    kind: str
    task: str
    sentinel_field: str  # JSON Pointer; "" where the schema has no plain string field: anywhere in the text
    schema: dict

    def sentinel(self, salt: str | None) -> str:
        """This task's sentinel in the run salted `salt`."""
        return "sx-" + hashlib.sha256(f"{salt or ''}:{self.id}".encode()).hexdigest()[:8]

    def text(self, salt: str | None) -> str:
        """The task first, then the schema without its `$schema` (a small model copies that URL
        into the first string field it writes, sentinel's included)."""
        shown = {k: v for k, v in self.schema.items() if k != "$schema"}
        return (f"Task: {self.task.replace('{sentinel}', self.sentinel(salt))}\n"
                f"Reply with one JSON object that matches this JSON Schema, and nothing else.\n"
                f"Schema: {json.dumps(shown, separators=(',', ':'))}\n")

    def response_format(self) -> dict:
        return {"type": "json_schema", "json_schema": {"name": self.id.replace("-", "_"), "schema": self.schema,
                                                       "strict": True}}


def load_tasks(path: Path = POOL) -> list[SchemaTask]:
    try:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        return [SchemaTask(r["id"], r["kind"], r["task"], r["sentinel_field"], r["schema"]) for r in rows]
    except (OSError, ValueError, KeyError) as exc:
        raise HarnessError(f"cannot read the schema tasks {path}: {exc}") from None


def profile_tasks(profile: dict) -> list[SchemaTask]:
    """The profile's pool: the repo's tasks, or (`schemas: {path, subset, split}`) JSONSchemaBench
    from a local copy (a folder or a dataset id already in the datasets cache; never fetched)."""
    source = profile.get("schemas")
    return load_tasks() if not source else load_bench(source["path"], source["subset"], source["split"])


def load_bench(path: str, subset: str, split: str) -> list[SchemaTask]:
    """JSONSchemaBench's rows (`json_schema` a JSON string, `unique_id`) as tasks, their kind the
    subset (or a row's own `subset`). The sentinel goes in the first required top-level string
    property without enum, const, format or pattern; a schema without one asks for the sentinel in
    any string value and is judged on the whole text."""
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    try:
        rows = datasets.load_dataset(str(Path(path).expanduser()) if Path(path).expanduser().exists() else path,
                                     subset, split=split)
    except Exception as exc:  # noqa: BLE001 - any loading failure is one line for the user
        raise HarnessError(f"cannot read JSONSchemaBench ({path}, subset {subset}, split {split}) from a local "
                           f"copy: {str(exc).splitlines()[0]}") from None
    tasks = []
    for i, row in enumerate(rows):
        try:
            schema = json.loads(row["json_schema"]) if isinstance(row["json_schema"], str) else row["json_schema"]
        except ValueError:
            continue
        if not isinstance(schema, dict):
            continue
        name = _sentinel_property(schema)
        task = (f"Fill in the object; put the code {{sentinel}} in the field {name!r}." if name else
                "Fill in the object; put the code {sentinel} in one of its string values.")
        tasks.append(SchemaTask(str(row.get("unique_id") or f"{subset}-{i}"), str(row.get("subset") or subset), task,
                                f"/{name.replace('~', '~0').replace('/', '~1')}" if name else "", schema))
    if not tasks:
        raise HarnessError(f"JSONSchemaBench ({path}, subset {subset}, split {split}) holds no readable schema")
    return tasks


def _sentinel_property(schema: dict) -> str | None:
    props = schema.get("properties") if schema.get("type", "object") == "object" else None
    if not isinstance(props, dict):
        return None
    for name in schema.get("required") or []:
        prop = props.get(name)
        if isinstance(prop, dict) and prop.get("type") == "string" and not ({"enum", "const", "format", "pattern"} & prop.keys()):
            return name
    return None


def draw_tasks(tasks: list[SchemaTask], n: int, seed: int, skip: int = 0) -> list[SchemaTask]:
    """`n` tasks taking the kinds in turn (each kind's order shuffled by `seed`), after the first
    `skip` of that order (a warm-up's tasks, never scored)."""
    rng = random.Random(seed)
    kinds: dict[str, list[SchemaTask]] = {}
    for task in tasks:
        kinds.setdefault(task.kind, []).append(task)
    for group in kinds.values():
        rng.shuffle(group)
    order = [group[i] for i in range(max(map(len, kinds.values()))) for group in kinds.values() if i < len(group)]
    if skip + n > len(order):
        raise HarnessError(f"{skip + n} schema tasks asked for; the pool has {len(order)}")
    return order[skip:skip + n]


def prompt(task: SchemaTask, salt: str | None, chat: bool) -> Prompt:
    return Prompt(id=task.id, text=task.text(salt), chat=chat, max_tokens=MAX_TOKENS,
                  response_format=task.response_format())


def payload(p: Prompt) -> dict:
    body = {"model": "default", "max_tokens": p.max_tokens, "temperature": 0, "response_format": p.response_format}
    return body | ({"messages": [{"role": "user", "content": p.text}]} if p.chat else {"prompt": p.text})


def pointer(value, path: str):
    """The value at a JSON Pointer, or KeyError."""
    for part in path.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(value, dict) or part not in value:
            raise KeyError(path)
        value = value[part]
    return value


def judge_output(task: SchemaTask, sentinel: str, text: str | None, finish_reason: str | None) -> PromptVerdict:
    """One output: valid (parses, validates, not cut) decides `ok`; `detail` says whether the
    sentinel is in its field as well."""
    def verdict(valid: bool, reason: str, has_sentinel: bool = False) -> PromptVerdict:
        return PromptVerdict(task.id, valid, int(valid), None if valid else 0, reason,
                             {"valid": valid, "sentinel": has_sentinel})

    if text is None:
        return verdict(False, "no output")
    if finish_reason == "length":
        return verdict(False, f"cut at max_tokens ({len(text)} characters)")
    try:
        value = json.loads(text)
    except ValueError as exc:
        return verdict(False, f"not JSON: {exc}")
    error = best_match(Draft202012Validator(task.schema, format_checker=FormatChecker()).iter_errors(value))
    if error is not None:
        where = "/" + "/".join(str(p) for p in error.absolute_path)
        return verdict(False, f"invalid at {where}: {error.message}")
    if not task.sentinel_field:
        found = sentinel in text
        return verdict(True, "" if found else "valid; sentinel not in the output", found)
    try:
        found = pointer(value, task.sentinel_field) == sentinel
    except KeyError:
        found = False
    return verdict(True, "" if found else f"valid; sentinel not at {task.sentinel_field}", found)


@dataclass
class SchemaVerdict(Verdict):
    """A set of outputs: valid rate at least VALID_RATE, and sentinel rate at least `sentinel_floor`
    (the constrained reference's on the same model)."""

    sentinel_floor: float = 0.0

    @property
    def valid_rate(self) -> float:
        return sum(p.ok for p in self.prompts) / len(self.prompts) if self.prompts else 0.0

    @property
    def sentinel_rate(self) -> float:
        return sum(bool(p.detail and p.detail["sentinel"]) for p in self.prompts) / len(self.prompts) if self.prompts else 0.0

    @property
    def ok(self) -> bool:
        return bool(self.prompts) and self.valid_rate >= VALID_RATE and self.sentinel_rate >= self.sentinel_floor

    @property
    def summary(self) -> str:
        bad = [p for p in self.prompts if not p.ok]
        head = (f"valid {self.valid_rate:.0%} (gate {VALID_RATE:.0%}), sentinel {self.sentinel_rate:.0%} "
                f"(gate {self.sentinel_floor:.0%}) of {len(self.prompts)}")
        return head + (f"; first invalid: {bad[0].prompt_id}: {bad[0].reason}" if bad else "")


    def to_json(self) -> dict:
        return super().to_json() | {"valid_rate": self.valid_rate, "sentinel_rate": self.sentinel_rate,
                                    "sentinel_floor": self.sentinel_floor}


def judge_outputs(tasks: list[SchemaTask], salt: str | None, texts: list[str | None],
                  finish_reasons: list[str | None], sentinel_floor: float = 0.0) -> SchemaVerdict:
    return SchemaVerdict([judge_output(t, t.sentinel(salt), text, reason)
                          for t, text, reason in zip(tasks, texts, finish_reasons, strict=True)], sentinel_floor)


# A stack that skips work the grammar decides (tokens it forces, drafts from the schema's fixed
# strings) declares `jump_forward`: it is judged against itself with that off, and its /metrics
# must show tokens it did not decode one forward at a time.
JUMP_FORWARD = Guard("jump_forward", counters=("jump_forward_tokens",))


def sentinel_floor(tasks: list[SchemaTask], salt: str | None, model_dir: Path, prompts: list[Prompt], top_k: int,
                   gate: float | None = None) -> float:
    """The sentinel rate a stack must reach: the profile's fixed `sentinel_gate` where it has one
    (paper: 0.9, the study's, for a model that follows the task), else the constrained
    reference's rate on the same prompts (a small model may put it nowhere)."""
    return gate if gate is not None else reference_sentinel_rate(tasks, salt, model_dir, prompts, top_k)


def outputs_judge(tasks: list[SchemaTask], salt: str | None, model_dir: Path, prompts: list[Prompt], top_k: int,
                  gate: float | None = None):
    """The accuracy pass's own judgement (Bench.lossless_accuracy's `judge_outputs`): the schema
    judge with its sentinel gate (`sentinel_floor`)."""
    floor = sentinel_floor(tasks, salt, model_dir, prompts, top_k, gate)
    return lambda outputs: judge_outputs(tasks, salt, [g.text for g in outputs], [g.finish_reason for g in outputs],
                                         floor)


def reference_sentinel_rate(tasks: list[SchemaTask], salt: str | None, model_dir: Path, prompts: list[Prompt],
                            top_k: int = TOP_K) -> float:
    refs = reference_outputs(model_dir, prompts, top_k)
    return judge_outputs(tasks, salt, [r.text for r in refs], [r.finish_reason for r in refs]).sentinel_rate


@dataclass(frozen=True)
class SchemaCheck:
    """A performance cell's outputs, every one judged twice: by the schema (valid rate, sentinel
    rate at least the reference's on these prompts) and against the constrained reference, by its
    text (the near-tie rule): valid JSON that is not what the model says is caught there."""

    tasks: list[SchemaTask]
    prompts: list[Prompt]  # measured request i's, as the reference decodes it
    salt: str | None
    top_k: int = TOP_K
    sentinel_gate: float | None = None  # the profile's fixed gate, else the reference's rate

    def judge(self, bench, records, cell: str) -> OutputsVerdict:
        text = OutputCheck(self.prompts, top_k=self.top_k).judge(bench, records, cell)
        done = text.judged
        floor = sentinel_floor(self.tasks, self.salt, bench.model_dir, self.prompts, self.top_k, self.sentinel_gate)
        schema = judge_outputs([self.tasks[i] for i in done], self.salt, [records[i].text for i in done],
                               [records[i].finish_reason for i in done], floor)
        return OutputsVerdict(AllOf.of({"schema": schema, "reference": text.verdict}), done, len(records))


# --- the setting's own metrics (its YAML's `metrics`): where a constrained decoder's time goes,
# from the /metrics counters a stack may serve (None where it serves none) ---


def _per_output_token(records, moved: dict | None, names: tuple[str, ...]) -> float | None:
    value = counters.first(moved, names)
    tokens = sum(r.output_units for r in records if r.ok)
    return value / tokens if value is not None and tokens else None


def mask_ms_per_token(records, moved: dict | None) -> float | None:
    """Grammar mask time (fill + apply) per output token over the cell, ms (`mask_us_total`)."""
    us = _per_output_token(records, moved, ("mask_us_total",))
    return us / 1000 if us is not None else None


def forced_token_share(records, moved: dict | None) -> float | None:
    """Share of output tokens the grammar forced and the stack took without a free choice
    (`jump_forward_tokens`)."""
    return _per_output_token(records, moved, ("jump_forward_tokens",))


def grammar_compiles(records, moved: dict | None) -> float | None:
    """Grammars compiled during the cell (a stack caching per schema compiles each schema once)."""
    return counters.first(moved, ("grammar_compiles",))
