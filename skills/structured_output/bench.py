"""Compile time per schema and mask time per token, on a real tokenizer and model.

    python -m skills.structured_output.bench --model DIR --schemas FILE [--decode 6] [--max-tokens 160]

FILE is JSON lines with a "schema" field (and optionally "id", "task"). Prints: the tokenizer's
build time; compile time over every schema in the file (median, p90, max); then, for the first
`--decode` schemas (one per "kind" first), greedy decoding with transformers (fp32, one thread)
step by step and with jump-forward (same tokens? forwards, forced share), the mask fill and apply
time per token at batch 1; then, replaying those tokens without the model: fill time per token alone and with all
sequences' masks filled together each step (llguidance's thread pool against row by row), and
jump_forward's cost per forced token with and without the check.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from .bitmask import BatchMasker
from .constraint import Constraint
from .grammar import GrammarCache
from .greedy import constrained_greedy
from .jump_forward import JumpStats, jump_forward

PROMPT = "Reply with one JSON object that matches this JSON Schema, and nothing else.\nSchema: {schema}\nTask: {task}\n"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def one_per_kind(rows: list[dict]) -> list[dict]:
    """The first schema of each "kind" in file order, then the rest: a few decodes see them all."""
    kinds: set = set()
    firsts, rest = [], []
    for i, r in enumerate(rows):
        kind = r.get("kind", i)
        (rest if kind in kinds else firsts).append(r)
        kinds.add(kind)
    return firsts + rest


class ModelForward:
    """forward(tokens) -> last logits, with a K/V cache kept between calls; times one-token calls."""

    def __init__(self, model) -> None:
        import inspect

        from transformers import DynamicCache

        self.model = model
        self.kv = DynamicCache(config=model.config)
        self.arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.step_s, self.steps = 0.0, 0

    def __call__(self, tokens) -> np.ndarray:
        import torch

        started = time.perf_counter()
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([list(tokens)]), use_cache=True, logits_to_keep=1,
                             **{self.arg: self.kv})
        if len(tokens) == 1:
            self.step_s, self.steps = self.step_s + time.perf_counter() - started, self.steps + 1
        return out.logits[0, -1].float().numpy()


def lockstep(cache: GrammarCache, schemas: list[dict], paths: list[list[int]], eos: int, parallel: bool) -> float:
    """Fill time per token (us) with all sequences' masks filled together each step, replaying
    their tokens (one sequence alone: batch 1)."""
    constraints = [Constraint(cache.get_schema(s), eos) for s in schemas]
    masker = BatchMasker(cache.tokenizer.vocab_size, max_batch=len(schemas), parallel=parallel)
    for step in range(max(map(len, paths))):
        live = [(c, p[step]) for c, p in zip(constraints, paths) if step < len(p)]
        masker.fill([c for c, _ in live])
        for c, token in live:
            c.advance(token)
    return masker.stats.fill_us_per_token


def forced_cost(cache: GrammarCache, schemas: list[dict], paths: list[list[int]], eos: int,
                verify: bool) -> tuple[float, int, int]:
    """Replay the paths as jump-forward decoding does (after each picked token, `jump_forward`):
    the us spent in it per forced token, the forced tokens, and the calls."""
    spent, forced, calls = 0.0, 0, 0
    for schema, path in zip(schemas, paths):
        c = Constraint(cache.get_schema(schema), eos)
        i = 0
        while i < len(path) and not c.ended:
            c.advance(path[i])
            started = time.perf_counter()
            taken = jump_forward(c, verify=verify)
            spent += time.perf_counter() - started
            assert taken == path[i + 1:i + 1 + len(taken)], "jump-forward left the path"
            i, forced, calls = i + 1 + len(taken), forced + len(taken), calls + 1
    return 1e6 * spent / max(forced, 1), forced, calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--schemas", type=Path, required=True)
    p.add_argument("--decode", type=int, default=6, help="schemas decoded with the model")
    p.add_argument("--max-tokens", type=int, default=160)
    args = p.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    rows = [json.loads(line) for line in args.schemas.read_text().splitlines() if line.strip()]
    print(f"{cpu_name()}; load {os.getloadavg()[0]:.2f}")
    hf = AutoTokenizer.from_pretrained(args.model)
    started = time.perf_counter()
    cache = GrammarCache.from_hf(hf, max_entries=len(rows) + 1)
    print(f"tokenizer: {time.perf_counter() - started:.2f} s (once per process)")
    compile_ms = sorted(1e3 * cache.get_schema(r["schema"]).compile_s for r in rows)
    print(f"compile, {len(rows)} schemas: median {statistics.median(compile_ms):.2f} ms, "
          f"p90 {compile_ms[int(0.9 * (len(compile_ms) - 1))]:.2f} ms, max {compile_ms[-1]:.2f} ms")
    started = time.perf_counter()
    for r in rows:
        cache.get_schema(r["schema"]).new_matcher()
    print(f"a sequence's matcher (a copy of the template): {1e6 * (time.perf_counter() - started) / len(rows):.1f} us")

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    eos = hf.eos_token_id
    fills, applies, paths, schemas, step_ms = [], [], [], [], []
    for r in one_per_kind(rows)[:args.decode]:
        schema = {k: v for k, v in r["schema"].items() if k != "$schema"}
        text = PROMPT.format(schema=json.dumps(schema, separators=(",", ":")), task=r.get("task", "").replace("{sentinel}", "sx-1a2b3c4d"))
        prompt = hf.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False)
        compiled = cache.get_schema(r["schema"])
        masker, forward = BatchMasker(compiled.vocab_size, max_batch=1), ModelForward(model)
        plain = constrained_greedy(forward, prompt, Constraint(compiled, eos), args.max_tokens,
                                   masker=masker, jump=False)
        stats = JumpStats()
        jumped = constrained_greedy(ModelForward(model), prompt, Constraint(compiled, eos), args.max_tokens,
                                    jump=True, stats=stats)
        step_ms.append(1e3 * forward.step_s / max(forward.steps, 1))
        fills.append(masker.stats.fill_us_per_token)
        applies.append(1e6 * masker.stats.apply_s / max(masker.stats.rows, 1))
        paths.append(plain.tokens)
        schemas.append(r["schema"])
        print(f"{r.get('id', '?'):22s} {len(plain.tokens):4d} tok, finished {plain.finished}, "
              f"jump-forward same tokens {jumped.tokens == plain.tokens}, forwards {plain.forwards} -> "
              f"{jumped.forwards} ({stats.tokens} forced), fill {fills[-1]:.0f} us/tok, apply {applies[-1]:.0f} us/tok")
    if paths:
        total = sum(map(len, paths))
        print(f"decoding, batch 1 (a forward between masks): fill {np.mean(fills):.0f} us/token, apply "
              f"{np.mean(applies):.0f} us/token (means over {len(paths)} schemas, {total} tokens); "
              f"a one-token forward {np.mean(step_ms):.1f} ms")
        again = [lockstep(cache, [s], [t], eos, False) for s, t in zip(schemas, paths)]
        print(f"replayed without the model, batch 1: fill {np.mean(again):.0f} us/token")
        for parallel in (True, False):
            fresh = GrammarCache(cache.tokenizer)  # first sequences again: new templates
            cold, warm = lockstep(fresh, schemas, paths, eos, parallel), lockstep(fresh, schemas, paths, eos, parallel)
            print(f"replayed, batch {len(paths)} in lockstep, {'thread pool' if parallel else 'row by row'}: fill "
                  f"{cold:.0f} us/token with new templates, {warm:.0f} us/token on a second pass")
        for verify in (True, False):
            us, n, calls = forced_cost(cache, schemas, paths, eos, verify)
            print(f"jump_forward(verify={verify}): {us:.0f} us per forced token ({n} forced in {calls} calls, "
                  "advancing over them included)")
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
