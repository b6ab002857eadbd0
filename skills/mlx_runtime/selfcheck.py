"""Decode a few schema tasks with jump-forward on and off, and say whether they agree.

    python -m skills.mlx_runtime.selfcheck --model DIR --tasks tasks.json [--max-tokens 128]

`tasks.json`: a list of {"messages": [...], "response_format": {...}}. Prints one JSON object:
per task the tokens, text, forwards and forced tokens of each mode, and the row-invariance
probe (last logits after a multi-token extend vs one-token steps). Run in the mlx-lm
environment (tests/skills/test_mlx_runtime.py does, in a subprocess); the judging of the JSON
is the caller's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
from pathlib import Path

from .engine import EngineConfig, MlxEngine


class Collector:
    """Stands in for a QueueStream: keeps what the engine sends."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.outputs: list = []

    def send(self, item) -> None:
        if isinstance(item, Exception):
            raise item
        self.outputs.append(item)

    def send_many(self, items) -> None:
        self.outputs.extend(items)


def decode(engine: MlxEngine, prompt: list[int], response_format: dict, max_tokens: int, jump: bool) -> dict:
    """One request on the engine's worker thread, with jump-forward as asked."""
    from skills.engine_api import SamplingParams

    engine.config = dataclasses.replace(engine.config, jump_forward=jump)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, response_format=response_format)
    before = engine.metrics()
    sink = Collector()
    engine._executor.submit(engine._generate, prompt, params, sink).result()
    after = engine.metrics()
    tokens = [o.token_id for o in sink.outputs if o.token_id is not None]
    return {"tokens": tokens, "text": engine.tokenizer.decode(tokens), "finish": sink.outputs[-1].finish_reason,
            "forwards": after["forward_passes"] - before["forward_passes"],
            "forced": after["jump_forward_tokens"] - before["jump_forward_tokens"]}


def row_probe(engine: MlxEngine, prompt: list[int], extend: list[int]) -> dict:
    """Last logits after `extend` in one forward vs one token at a time, from the same prefill."""

    def run() -> dict:
        mx = engine.mx
        cache_a, _ = engine._prefill(prompt)
        cache_b, _ = engine._prefill(prompt)
        a = engine.forward(extend, cache_a)
        for token in extend:
            b = engine.forward([token], cache_b)
        mx.eval(a, b)
        return {"rows": len(extend), "identical": bool(mx.array_equal(a, b)),
                "max_abs_diff": float(mx.max(mx.abs(a.astype(mx.float32) - b.astype(mx.float32))))}

    return engine._executor.submit(run).result()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--tasks", required=True, type=Path)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)
    from skills.openai_server.prompts import chat_prompt_ids
    from skills.openai_server.protocol import ChatMessage

    engine = MlxEngine.load(args.model, EngineConfig(dtype=args.dtype))
    report = {"runtime": engine.runtime, "tasks": []}
    for task in json.loads(args.tasks.read_text()):
        prompt = chat_prompt_ids(engine.tokenizer, [ChatMessage(m["role"], m["content"]) for m in task["messages"]])
        on = decode(engine, prompt, task["response_format"], args.max_tokens, jump=True)
        off = decode(engine, prompt, task["response_format"], args.max_tokens, jump=False)
        report["tasks"].append({"jump": on, "no_jump": off, "probe": row_probe(engine, prompt, on["tokens"][:12])})
    engine.shutdown()
    json.dump(report, sys.stdout)
    print(flush=True)
    # The report is out: leave without the interpreter's teardown, where a native thread pool
    # left running (MLX's, llguidance's) can abort the process ("terminate called without an
    # active exception", seen once in CI after a complete report).
    os._exit(0)


if __name__ == "__main__":
    main()
