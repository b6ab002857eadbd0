"""Setting B's workload: bug-fix items built deterministically from real Python source.

An item is one function from the standard library of the running interpreter (a fixed module
list, read with `ast`), with exactly one injected bug of a realistic kind:

- `swapped_operator`: a comparison, arithmetic or boolean operator replaced by a near one
  (`<` -> `<=`, `+` -> `-`, `and` -> `or`, ...);
- `off_by_one`: a small integer literal moved by one;
- `wrong_name`: a local variable read replaced by another local of the same function;
- `negated_condition`: an `if`/`while` test negated (or a `not` removed).

The edit is made in the source text at the position `ast` gives, so the rest of the function
(comments, layout) is untouched and the buggy code differs from the original in one place: the
request's `prediction` (the buggy code) is then almost all of the expected answer, which is the
premise of predicted outputs. Every injected function still parses and its AST differs from the
original's.

Items: prompt = the buggy code, then "it has exactly one bug, reply with the whole corrected
function only" (chat templated by the stack); `prediction` = the buggy code; `gold` = the original. The choice of
functions, bug kinds, sites and the split are all keyed by sha256 of (seed, item id), never by
the process's hash seed or iteration order, so the same interpreter, parameters and seed give
the same dataset byte for byte. Standard-library source changes between Python versions, so the
version is part of the cache key and is recorded in the dataset's metadata.

The dataset is saved with `datasets.DatasetDict.save_to_disk` under the servebench cache
(`<cache>/datasets/code_edit-py<version>-<params hash>/`), splits `tune` (for agents to tune on)
and `heldout` (scored), with a `meta.json` holding the parameters, the Python version and a
checksum of the items; a missing, partial or corrupted copy is rebuilt.

    python -m scenarios.workloads.code_edit [--min-lines 20 --max-lines 40 --items 120 --heldout 40 --seed 5]
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import json
import os
import platform
import shutil
import textwrap
import tokenize
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

RECIPE_VERSION = 2  # 2: code first, then the instruction
BUG_KINDS = ("swapped_operator", "off_by_one", "wrong_name", "negated_condition")

# Pure-Python standard-library modules with plenty of ordinary functions. Fixed, in this order;
# a module missing from some interpreter is skipped (the Python version is in the cache key).
MODULES = (
    "argparse", "ast", "base64", "bisect", "calendar", "cmd", "code", "colorsys", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "difflib", "dis", "email.utils", "enum", "filecmp",
    "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob",
    "gzip", "heapq", "html", "http.cookies", "imaplib", "inspect", "ipaddress", "json.decoder",
    "json.encoder", "linecache", "locale", "logging", "mailbox", "mimetypes", "netrc", "ntpath",
    "numbers", "optparse", "pathlib", "pdb", "pickletools", "platform", "plistlib", "poplib",
    "posixpath", "pprint", "pstats", "queue", "quopri", "random", "reprlib", "sched", "selectors",
    "shlex", "shutil", "smtplib", "statistics", "string", "subprocess", "sysconfig", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "typing",
    "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "zipfile",
    "_pydecimal", "_pyio",
)

# The code comes first and the instruction after it: SmolLM2-135M-Instruct then answers with a
# fenced copy of the function (most of a reply's text is the buggy code, measured on four
# held-out items), where with the instruction first it often writes prose about the function.
INSTRUCTION = ("```python\n{code}```\n\nThe Python function above has exactly one bug. Reply with the whole "
               "corrected function in a Python code block and nothing else.")

_COMPARE_SWAP = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "=="}
_BINOP_SWAP = {"+": "-", "-": "+", "//": "/", "<<": ">>", ">>": "<<"}
_BOOL_SWAP = {"and": "or", "or": "and"}


@dataclass(frozen=True)
class BuildParams:
    """What decides the dataset (with the interpreter's version)."""

    min_lines: int = 20
    max_lines: int = 40
    items: int = 120  # total, both splits
    heldout: int = 40  # of which scored
    seed: int = 5

    def key(self) -> str:
        blob = json.dumps(asdict(self) | {"recipe": RECIPE_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Edit:
    """Replace source[start:end] with `text`; `kind` and a one-line description of the bug."""

    kind: str
    start: int
    end: int
    text: str
    note: str

    def apply(self, source: str) -> str:
        return source[: self.start] + self.text + source[self.end:]


def digest(*parts: object) -> int:
    """A stable integer from the parts (sha256; never Python's per-process hash)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


# --------------------------------------------------------------------------- source extraction


def module_functions(module: str) -> list[tuple[str, str]]:
    """(qualified name, dedented source) of each top-level function and method of `module`, in file order."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return []
    text = Path(spec.origin).read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    tree = ast.parse(text)
    found = []

    def take(node: ast.AST, qualname: str) -> None:
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        found.append((qualname, textwrap.dedent("".join(lines[first - 1: node.end_lineno]))))

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            take(node, node.name)
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    take(sub, f"{node.name}.{sub.name}")
    return found


# --------------------------------------------------------------------------- bug sites


class _Source:
    """Offsets into one function's text from ast (line, column) positions. ASCII text only."""

    def __init__(self, source: str):
        self.text = source
        self.starts = [0]
        for line in source.splitlines(keepends=True):
            self.starts.append(self.starts[-1] + len(line))
        self.tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                       if t.type in (tokenize.OP, tokenize.NAME)]

    def offset(self, line: int, col: int) -> int:
        return self.starts[line - 1] + col

    def start(self, node: ast.AST) -> int:
        return self.offset(node.lineno, node.col_offset)

    def end(self, node: ast.AST) -> int:
        return self.offset(node.end_lineno, node.end_col_offset)

    def operator_between(self, left: ast.AST, right: ast.AST, table: dict[str, str]) -> tuple[int, int, str] | None:
        """The first token from `table` between the end of `left` and the start of `right`."""
        lo, hi = self.end(left), self.start(right)
        for tok in self.tokens:
            at = self.offset(*tok.start)
            if lo <= at < hi and tok.string in table:
                return at, self.offset(*tok.end), tok.string
        return None


def _locals(fn: ast.FunctionDef) -> list[str]:
    args = fn.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    names += [n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
    return sorted(set(names) - {"self", "cls"})


def candidate_edits(source: str) -> dict[str, list[Edit]]:
    """Every place each kind of bug could go in `source` (one function), by kind, in source order."""
    tree = ast.parse(source)
    fn = tree.body[0]
    src = _Source(source)
    out: dict[str, list[Edit]] = {k: [] for k in BUG_KINDS}
    local_names = _locals(fn)
    for node in ast.walk(fn):
        if isinstance(node, ast.Compare):
            for left, right in zip([node.left, *node.comparators], node.comparators):
                found = src.operator_between(left, right, _COMPARE_SWAP)
                if found:
                    a, b, op = found
                    out["swapped_operator"].append(Edit("swapped_operator", a, b, _COMPARE_SWAP[op], f"{op} -> {_COMPARE_SWAP[op]}"))
        elif isinstance(node, ast.BinOp):
            found = src.operator_between(node.left, node.right, _BINOP_SWAP)
            if found:
                a, b, op = found
                out["swapped_operator"].append(Edit("swapped_operator", a, b, _BINOP_SWAP[op], f"{op} -> {_BINOP_SWAP[op]}"))
        elif isinstance(node, ast.BoolOp):
            found = src.operator_between(node.values[0], node.values[1], _BOOL_SWAP)
            if found:
                a, b, op = found
                out["swapped_operator"].append(Edit("swapped_operator", a, b, _BOOL_SWAP[op], f"{op} -> {_BOOL_SWAP[op]}"))
        elif (isinstance(node, ast.Constant) and type(node.value) is int and 0 <= node.value <= 16
              and source[src.start(node):src.end(node)] == str(node.value)):
            new = node.value + 1 if node.value == 0 or digest(source, src.start(node)) % 2 else node.value - 1
            out["off_by_one"].append(Edit("off_by_one", src.start(node), src.end(node), str(new), f"{node.value} -> {new}"))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in local_names and len(local_names) > 1:
            others = [n for n in local_names if n != node.id]
            new = others[digest(source, src.start(node)) % len(others)]
            out["wrong_name"].append(Edit("wrong_name", src.start(node), src.end(node), new, f"{node.id} -> {new}"))
        elif isinstance(node, (ast.If, ast.While)):
            test = node.test
            a, b = src.start(test), src.end(test)
            if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
                out["negated_condition"].append(Edit("negated_condition", a, src.start(test.operand), "", "removed `not`"))
            elif isinstance(test, (ast.Name, ast.Attribute, ast.Call, ast.Compare, ast.Subscript)):
                out["negated_condition"].append(Edit("negated_condition", a, a, "not ", "negated the condition"))
            else:
                out["negated_condition"].append(Edit("negated_condition", a, b, f"not ({source[a:b]})", "negated the condition"))
    for edits in out.values():
        edits.sort(key=lambda e: (e.start, e.end, e.text))
    return out


def valid_bug(original: str, buggy: str) -> bool:
    """The buggy code parses, and means something else than the original."""
    try:
        return ast.dump(ast.parse(buggy)) != ast.dump(ast.parse(original))
    except SyntaxError:
        return False


def inject(source: str, kind: str, key: object) -> tuple[str, Edit] | None:
    """One bug of `kind` in `source`, the site chosen by `key`; None when the kind has no valid site."""
    edits = candidate_edits(source)[kind]
    if not edits:
        return None
    first = digest(key, kind) % len(edits)
    for i in range(len(edits)):  # from the chosen site on, the first edit that is a real bug
        edit = edits[(first + i) % len(edits)]
        buggy = edit.apply(source)
        if valid_bug(source, buggy):
            return buggy, edit
    return None


# --------------------------------------------------------------------------- the dataset


def _eligible(source: str, params: BuildParams) -> bool:
    n = source.count("\n")
    if not params.min_lines <= n <= params.max_lines or not source.isascii() or "\t" in source:
        return False
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef))


def line_of(source: str, offset: int) -> int:
    return source.count("\n", 0, offset) + 1


def make_item(item_id: str, module: str, function: str, source: str, kind: str, seed: int) -> dict | None:
    injected = inject(source, kind, (seed, item_id))
    if injected is None:
        return None
    buggy, edit = injected
    return {"id": item_id, "module": module, "function": function, "kind": kind, "bug": edit.note,
            "line": line_of(source, edit.start), "lines": source.count("\n"),
            "prompt": INSTRUCTION.format(code=buggy), "prediction": buggy, "buggy": buggy, "gold": source}


def build_items(params: BuildParams, log: Callable[[str], None] = lambda _: None) -> list[dict]:
    """`params.items` items in a seeded order; bug kinds rotate so that each is near a quarter."""
    pool: list[tuple[str, str, str, str]] = []
    seen: set[str] = set()
    for module in MODULES:
        try:
            functions = module_functions(module)
        except (OSError, SyntaxError, ImportError, ValueError) as exc:
            log(f"skipping {module}: {exc}")
            continue
        for qualname, source in functions:
            if source in seen or not _eligible(source, params):
                continue
            seen.add(source)
            pool.append((f"{module}.{qualname}", module, qualname, source))
    pool.sort(key=lambda p: (digest(params.seed, p[0]), p[0]))
    items = []
    for item_id, module, qualname, source in pool:
        if len(items) == params.items:
            break
        # The kind due in rotation first, then the kinds used least so far (not every function has every kind).
        due = BUG_KINDS[len(items) % len(BUG_KINDS)]
        used = {k: sum(1 for i in items if i["kind"] == k) for k in BUG_KINDS}
        for kind in [due, *sorted((k for k in BUG_KINDS if k != due), key=lambda k: (used[k], BUG_KINDS.index(k)))]:
            item = make_item(item_id, module, qualname, source, kind, params.seed)
            if item is not None:
                items.append(item)
                break
    if len(items) < params.items:
        raise ValueError(f"only {len(items)} eligible functions of {params.min_lines}-{params.max_lines} lines "
                         f"in this interpreter's standard library; {params.items} asked for")
    return items


def split(items: list[dict], heldout: int) -> dict[str, list[dict]]:
    """The first `heldout` items (already in seeded order) are scored; the rest are for tuning."""
    if not 0 < heldout < len(items):
        raise ValueError(f"heldout must be between 1 and {len(items) - 1}")
    return {"tune": items[heldout:], "heldout": items[:heldout]}


def checksum(splits: dict[str, list[dict]]) -> str:
    return hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()


def dataset_dir(params: BuildParams) -> Path:
    from harness.assets import cache_root

    return cache_root() / "datasets" / f"code_edit-py{platform.python_version()}-{params.key()}"


def _meta(params: BuildParams, splits: dict[str, list[dict]]) -> dict:
    return {"recipe_version": RECIPE_VERSION, "python": platform.python_version(),
            "implementation": platform.python_implementation(), "params": asdict(params),
            "counts": {k: len(v) for k, v in splits.items()}, "sha256": checksum(splits),
            "source": "functions of the running interpreter's standard library, one injected bug each"}


def _load(path: Path, params: BuildParams) -> dict[str, list[dict]] | None:
    """The cached splits, or None when missing, partial, from other parameters or corrupted."""
    from datasets import load_from_disk

    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("recipe_version") != RECIPE_VERSION or meta.get("params") != asdict(params) \
                or meta.get("python") != platform.python_version():
            return None
        data = load_from_disk(str(path))
        splits = {name: data[name].to_list() for name in ("tune", "heldout")}
    except Exception:  # noqa: BLE001 - any unreadable cache is rebuilt
        return None
    return splits if checksum(splits) == meta.get("sha256") else None


def ensure_dataset(params: BuildParams, log: Callable[[str], None] = lambda _: None) -> dict[str, list[dict]]:
    """The splits {"tune": [...], "heldout": [...]}, from the cache, built and saved when missing or damaged."""
    from datasets import Dataset, DatasetDict, DatasetInfo

    from harness.atomic import atomic_write_json

    path = dataset_dir(params)
    cached = _load(path, params) if path.exists() else None
    if cached is not None:
        return cached
    log(f"building the code-editing dataset at {path}")
    splits = split(build_items(params, log), params.heldout)
    meta = _meta(params, splits)
    tmp = path.with_name(f".{path.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    info = DatasetInfo(description=json.dumps(meta, sort_keys=True))
    DatasetDict({name: Dataset.from_list(rows, info=info) for name, rows in splits.items()}).save_to_disk(str(tmp))
    atomic_write_json(tmp / "meta.json", meta)  # written last: its presence marks a complete copy
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return splits


def load_split(params: BuildParams, name: str, log: Callable[[str], None] = lambda _: None) -> list[dict]:
    return ensure_dataset(params, log)[name]


# --------------------------------------------------------------------------- CodeEditorBench (paper profile)

# Field names tried in order: the file's schema is not pinned here (no hub access where this was
# written), so a row without any of them stops the run with the keys it does have.
_CEB_CODE = ("incorrect_solutions", "incorrect_solution", "buggy_code", "code")
_CEB_GOLD = ("solutions", "solution", "correct_solution")
_CEB_LANGUAGE = ("code_language", "language", "lang")
_CEB_ID = ("idx", "id", "task_id", "title")


def _field(row: dict, names: tuple[str, ...], what: str, required: bool = True):
    for name in names:
        if row.get(name) not in (None, ""):
            value = row[name]
            return value[0] if isinstance(value, list) and value else value
    if required:
        raise ValueError(f"CodeEditorBench row has no {what} field (tried {', '.join(names)}); it has {sorted(row)}")
    return None


def codeeditorbench_splits(cfg: dict) -> dict[str, list[dict]]:
    """Items from a CodeEditorBench code-debug file (the user's hub access), in the same item shape."""
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(cfg["hub_id"], cfg["data_file"], repo_type="dataset")
    items = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        if cfg.get("language") and str(_field(row, _CEB_LANGUAGE, "language")).lower() != cfg["language"]:
            continue
        buggy = str(_field(row, _CEB_CODE, "buggy code"))
        buggy = buggy if buggy.endswith("\n") else buggy + "\n"
        gold = _field(row, _CEB_GOLD, "solution", required=False)
        item_id = f"ceb-{_field(row, _CEB_ID, 'id', required=False) or n}"
        items.append({"id": item_id, "module": "", "function": "", "kind": "codeeditorbench", "bug": "",
                      "line": 0, "lines": buggy.count("\n"), "prompt": INSTRUCTION.format(code=buggy),
                      "prediction": buggy, "buggy": buggy, "gold": str(gold) if gold else ""})
    items.sort(key=lambda i: (digest(cfg["seed"], i["id"]), i["id"]))
    if cfg.get("items"):
        items = items[: cfg["items"]]
    return split(items, min(cfg["heldout"], len(items) - 1))


def scenario_items(cfg: dict, split_name: str, log: Callable[[str], None] = lambda _: None) -> list[dict]:
    """A scenario profile's `dataset` section -> the items of one split."""
    if cfg["source"] == "stdlib":
        params = BuildParams(min_lines=cfg["min_lines"], max_lines=cfg["max_lines"], items=cfg["items"],
                             heldout=cfg["heldout"], seed=cfg["seed"])
        return ensure_dataset(params, log)[split_name]
    if cfg["source"] == "codeeditorbench":
        return codeeditorbench_splits(cfg)[split_name]
    raise ValueError(f"unknown dataset source {cfg['source']!r}: stdlib or codeeditorbench")


# --------------------------------------------------------------------------- judging outputs (reported, not gated)


def extract_code(text: str) -> str:
    """The code in a reply: the first fenced block if there is one, else the whole text."""
    if "```" in text:
        body = text.split("```", 1)[1]
        first_line, _, rest = body.partition("\n")
        body = rest if first_line.strip().isidentifier() or not first_line.strip() else body
        return body.split("```", 1)[0]
    return text


def similarity(output: str, gold: str) -> float:
    """difflib's ratio between the code in the reply and the original function (1.0 = identical)."""
    import difflib

    return difflib.SequenceMatcher(None, extract_code(output).strip(), gold.strip(), autojunk=False).ratio()


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Build (or check) the setting-B dataset and print its summary.")
    for name, default in asdict(BuildParams()).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    args = p.parse_args(argv)
    params = BuildParams(**{k: getattr(args, k) for k in asdict(BuildParams())})
    splits = ensure_dataset(params, print)
    print(json.dumps(_meta(params, splits), indent=2))
    print(f"saved at {dataset_dir(params)}")


if __name__ == "__main__":
    main()


# --- the engagement guard of predicted outputs ---


def accepted_tokens_are_consistent(metrics: dict, moved, accepted: float | None) -> str | None:
    """Accepted prediction tokens are output tokens that cost no forward pass of their own: more
    accepted than output, or a forward pass for every output token and request, is a claim without
    the saving behind it."""
    out, requests = metrics.get("total_output_tokens"), metrics.get("completed")
    if accepted is None or not out:
        return None
    if accepted > out:
        return f"usage claims {accepted:g} accepted prediction tokens of {out} output tokens"
    passes = (moved or {}).get("forward_passes")
    if passes is not None and accepted > 0 and requests and passes >= out + requests:
        return (f"usage claims {accepted:g} accepted prediction tokens, yet /metrics counts {passes:g} forward "
                f"passes for {out} output tokens of {requests} requests: not one pass saved")
    return None


def prediction_guard():
    """Predicted outputs (setting B): OpenAI's usage field and the stack contract's /metrics
    counter, checked against the output tokens and forward passes."""
    from harness.engagement import Guard

    return Guard(feature="prediction", usage_key="accepted_prediction_tokens", counters=("spec_accepted_tokens",),
                 consistency=(accepted_tokens_are_consistent,))


PREDICTION = prediction_guard()


# --- the setting's own metric (its YAML's `metrics`) ---


def median_tok_per_s(records) -> float | None:
    """median(output tokens per request) / median(e2el), the study's concurrency-1 figure for
    predicted outputs; not the median of per-request rates."""
    import numpy as np

    done = [r for r in records if r.ok]
    if not done:
        return None
    latency = float(np.median([r.e2el for r in done]))
    return float(np.median([r.output_units for r in done])) / latency if latency > 0 else None
