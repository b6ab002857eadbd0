"""Bug-fix items from the standard library, served in-process with and without the prediction.

    python -m skills.speculative_decoding.bench --model DIR [--items 20] [--k 16]

Each item: a stdlib function of 20-60 lines with one operator swapped; the request asks for
the fixed program and predicts the buggy one (as setting B's workload does). Prints per item
whether the output with the prediction equals the output without it (the lossless check),
tokens, acceptance, and tok/s of: plain decoding (no speculation), prompt lookup only
(no prediction), and prediction drafting.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import statistics
import time
from pathlib import Path

MODULES = ("textwrap", "heapq", "bisect", "statistics", "shlex", "fnmatch", "colorsys", "calendar", "difflib",
           "string", "base64", "ipaddress", "fractions", "random", "glob", "posixpath", "tokenize", "csv",
           "shutil", "urllib.parse", "email.utils", "pprint", "gettext", "ntpath")
SWAPS = ((" <= ", " < "), (" < ", " <= "), (" + 1", " - 1"), (" == ", " != "), (" and ", " or "),
         (" - ", " + "), (" > ", " >= "))
PROMPT = "Fix the bug in this Python function. Reply with the corrected program only.\n\n```python\n{code}```\n"


def buggy_items(n: int) -> list[tuple[str, str, str]]:
    """(name, original source, buggy source): deterministic, the first n that qualify."""
    items = []
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        taken = 0
        for name, fn in sorted(vars(mod).items()):
            if taken >= 2:  # at most two per module, for variety
                break
            if not inspect.isfunction(fn) or fn.__module__ != mod_name:
                continue
            try:
                src = inspect.getsource(fn)
            except (OSError, TypeError):
                continue
            if not 20 <= src.count("\n") <= 60:
                continue
            for old, new in SWAPS:
                if old in src:
                    items.append((f"{mod_name}.{name}", src, src.replace(old, new, 1)))
                    taken += 1
                    break
            if len(items) >= n:
                return items
    return items


def _first_diff(a: list[int], b: list[int]) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    return f" at token {i}" if i is not None else f" in length ({len(a)} vs {len(b)})"


def run_one(engine, tokenizer, code: str, prediction: bool, max_tokens: int):
    from skills.engine_api import SamplingParams

    messages = [{"role": "user", "content": PROMPT.format(code=code)}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    pred = tuple(tokenizer(code, add_special_tokens=False).input_ids) if prediction else None
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, prediction=pred)
    outs = []
    started = time.perf_counter()
    engine.add_request(list(prompt), params, outs.extend)
    first = None
    while engine.scheduler.has_work() or not engine._inbox.empty():
        engine.step()
        if first is None and outs:
            first = time.perf_counter()
    elapsed = time.perf_counter() - started
    ids = [o.token_id for o in outs if o.token_id is not None]
    usage = next((o.prediction for o in reversed(outs) if o.prediction is not None), None)
    decode_s = elapsed - (first - started) if first else elapsed
    return ids, elapsed, decode_s, usage


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--items", type=int, default=20)
    p.add_argument("--k", type=int, default=16, help="num_speculative_tokens")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--modes", default="plain,ngram,prediction")
    args = p.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from skills.engine_core import EngineConfig, load_engine
    from skills.engine_core.kernels import Kernels
    from skills.speculative_decoding import SpecConfig, Speculator

    if not Kernels.use_native():  # engine-b's kernels (C++ layer loop, row attention, small_gemm)
        print("the C++ kernels cannot be built here: the eager path runs (not what engine-b serves with)")
    cfg = EngineConfig(max_num_seqs=2, max_num_batched_tokens=512, max_model_len=2048, dtype=args.dtype,
                       few_row_matmul="auto")
    engines = {"plain": load_engine(args.model, cfg)}
    spec = load_engine(args.model, cfg, speculator=Speculator(SpecConfig(num_speculative_tokens=args.k)))
    engines["ngram"] = engines["prediction"] = spec
    tok = spec.tokenizer
    modes = args.modes.split(",")
    print(f"load {os.getloadavg()[0]:.2f}")
    rates: dict[str, list[float]] = {m: [] for m in modes}
    decode_rates: dict[str, list[float]] = {m: [] for m in modes}  # after the first token (no prefill)
    differ = plain_differ = 0
    for name, _, bug in buggy_items(args.items):
        res = {m: run_one(engines[m], tok, bug, m == "prediction", args.max_tokens) for m in modes}
        # The lossless check: the speculating stack with vs without the prediction; and, for
        # information, against plain one-token decoding (a different numeric path in bf16).
        spec_modes = [m for m in modes if m != "plain"]
        base = res[spec_modes[0] if spec_modes else modes[0]][0]
        same = all(res[m][0] == base for m in spec_modes)
        differ += not same
        status = "same" if same else "DIFF" + _first_diff(base, res[spec_modes[-1]][0])
        if "plain" in res and spec_modes:
            vs_plain = res["plain"][0] == base
            plain_differ += not vs_plain
            status += " (plain: " + ("same" if vs_plain else "diff" + _first_diff(res["plain"][0], base)) + ")"
        line = []
        for m in modes:
            ids, el, dec, usage = res[m]
            rates[m].append(len(ids) / el)
            decode_rates[m].append((len(ids) - 1) / dec if dec > 0 else 0.0)
            line.append(f"{m} {len(ids) / el:6.1f} tok/s")
            if usage is not None:
                line.append(f"acc {usage.accepted} rej {usage.rejected}")
        print(f"{name:32s} {len(base):4d} tok {status} | " + " | ".join(line),
              flush=True)
    m = spec.metrics()
    print(f"with vs without prediction differ: {differ}; spec vs plain decoding differ: {plain_differ}; median tok/s (request, prefill included): "
          + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in rates.items())
          + "; after the first token: " + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in decode_rates.items()))
    print(f"spec counters: steps {m['spec_steps']} proposed {m['spec_proposed_tokens']} "
          f"accepted {m['spec_accepted_tokens']} (prediction {m['spec_prediction_accepted_tokens']}); "
          f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
