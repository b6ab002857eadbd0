"""Test-double stack for setting C (prefix caching on a hybrid attention + GatedDeltaNet model):
a real model with a snapshot prefix cache done right, and five ways wrong.

It serves a transformers `olmo_hybrid` folder (the tiny one: `ensure_model("olmo-hybrid-tiny")`)
behind the shared OpenAI layer (skills/openai_server), one request at a time, greedy only. A hybrid
model's cache is not only attention K/V: each GatedDeltaNet layer keeps a conv state and a
recurrent state that summarise the whole prefix and cannot be cut back to an earlier position. So
the prefix cache keeps snapshots: the prompt is prefilled in `--chunk` (64) token chunks counted
from position 0, and a deep copy of the whole cache (K/V and GatedDeltaNet states) is stored at
every chunk boundary and at the prompt's end, keyed by the token prefix it holds. A new request
restores a copy of the longest snapshot whose tokens are a proper prefix of its prompt (at least
one prompt token is always computed, for the first token's logits, as vLLM does), prefills the
rest and decodes greedily. Snapshots are kept least-recently-used first out (`--max-snapshots`).

It reports what it reused: `/metrics` counters `prefix_cache_hit_tokens` (restored prompt tokens,
summed) and `prefix_cache_query_tokens` (prompt tokens looked up), and per request
`usage.prompt_tokens_details.cached_tokens` (TokenOutput.cached_tokens; absent with the cache off). `POST /reset_prefix_cache`
empties the cache; `--no-prefix-cache` never looks up, restores or stores anything (the spec's
off switch).

`--mode`:
- honest:        as above; its outputs are those of a full recompute.
- stale:         on a hit it restores another snapshot than the one that matched (the most recently
                 stored other one: another prompt's, or another position's) and reports the hit:
                 its outputs are wrong.
- inplace:       restores the matched snapshot itself, not a copy, so the request advances the stored
                 state: the first reuse of a snapshot is right, later reuses start from a state an
                 earlier request already moved on, and are wrong.
- fake-hits:     looks up and reports hits as honest does (counters and cached_tokens) but prefills
                 the whole prompt from scratch: outputs right, no time saved.
- ignores-reset: answers POST /reset_prefix_cache with 200 {"reset": true} and keeps its cache.
- tie-then-junk: a cache done right, but its 4th output token is the model's runner-up (a near-tie,
                 as a low-precision stack takes one) and every one after it another than the
                 model's: past that near-tie the token match sees nothing wrong.

    python tests/stacks/hybrid_double.py --model DIR --port P [--mode honest] [--no-prefix-cache]
        [--chunk 64] [--max-snapshots 256] [--threads N]
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never talk to a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import copy
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from harness.machine import usable_cpus
from skills.openai_server.serial import SerialEngine

MODES = ("honest", "stale", "inplace", "fake-hits", "ignores-reset", "tie-then-junk")
TIE_AT = 3  # tie-then-junk: the output token that is the runner-up

log = logging.getLogger("hybrid-double")


@dataclass
class Snapshot:
    cache: object  # a transformers DynamicCache holding exactly the key's tokens
    stored: int  # store order, for `stale`


class SnapshotCache:
    """Token prefix -> cache snapshot, least recently used evicted first. Thread-safe (the worker
    stores and looks up, the event loop resets)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, ...], Snapshot] = OrderedDict()
        self._stored = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def longest_prefix(self, prompt: list[int]) -> tuple[tuple[int, ...], Snapshot] | None:
        """The longest snapshot whose tokens are a proper prefix of `prompt`."""
        with self._lock:
            for length in sorted({len(k) for k in self._entries if len(k) < len(prompt)}, reverse=True):
                key = tuple(prompt[:length])
                if key in self._entries:
                    self._entries.move_to_end(key)
                    return key, self._entries[key]
        return None

    def latest_other(self, key: tuple[int, ...]) -> Snapshot | None:
        """The most recently stored snapshot other than `key`'s."""
        with self._lock:
            others = [s for k, s in self._entries.items() if k != key]
        return max(others, key=lambda s: s.stored) if others else None

    def store(self, key: tuple[int, ...], cache) -> None:
        """Keep a copy of `cache`, which holds exactly `key`'s tokens (first copy wins)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
        snapshot = Snapshot(copy.deepcopy(cache), 0)
        with self._lock:
            self._stored += 1
            snapshot.stored = self._stored
            self._entries[key] = snapshot
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class HybridEngine(SerialEngine):
    """A `ServingEngine` (skills/engine_api) over an olmo_hybrid model, with the
    snapshot prefix cache and the misbehaviour `mode` asks for."""

    def __init__(self, model_dir: Path, mode: str, prefix_cache: bool, chunk: int, max_snapshots: int) -> None:
        import torch

        from baselines.hf_reference.loader import load_model

        super().__init__(("forward_passes", "generation_tokens_total", "prefix_cache_hit_tokens",
                          "prefix_cache_query_tokens"), "hybrid", log)
        loaded = load_model(model_dir, "float32", "cpu")
        self.torch = torch
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.eos_ids = loaded.eos_ids
        self.max_model_len = loaded.max_model_len
        self.vocab_size = loaded.vocab_size
        self.mode = mode
        self.prefix_cache = prefix_cache
        self.chunk = chunk
        self.snapshots = SnapshotCache(max_snapshots)
        self.runtime = {"mode": mode, "prefix_cache": prefix_cache, "chunk": chunk}
        self.model.register_forward_pre_hook(lambda *_: self._count(forward_passes=1))

    # --- ServingEngine, called from the event loop ---

    def reset_prefix_cache(self) -> bool:
        if self.mode != "ignores-reset":
            self.snapshots.clear()
        log.info("prefix cache reset%s", " (ignored)" if self.mode == "ignores-reset" else "")
        return True

    # --- worker thread ---

    def _restore(self, prompt: list[int]) -> tuple[int, object | None]:
        """(prompt tokens reported as cached, the cache to continue from or None for a cold start)."""
        if not self.prefix_cache:
            return 0, None
        self._count(prefix_cache_query_tokens=len(prompt))
        found = self.snapshots.longest_prefix(prompt)
        if found is None:
            return 0, None
        key, snapshot = found
        hit = len(key)
        self._count(prefix_cache_hit_tokens=hit)
        if self.mode == "fake-hits":
            return hit, None  # reported, then the whole prompt is computed anyway
        if self.mode == "inplace":
            return hit, snapshot.cache  # the stored object itself: this request will advance it
        if self.mode == "stale":
            snapshot = self.snapshots.latest_other(key) or snapshot
        return hit, copy.deepcopy(snapshot.cache)

    def _generate(self, prompt: list[int], params, stream) -> str:
        with self.torch.inference_mode():
            return self._decode(prompt, params, stream)

    def _decode(self, prompt: list[int], params, stream) -> str:
        from transformers import DynamicCache

        from skills.engine_api import TokenOutput

        torch = self.torch
        if stream.cancelled.is_set():
            stream.send(TokenOutput(None, None, "abort"))
            return "not started, abort"
        hit, cache = self._restore(prompt)
        position = hit if cache is not None else 0
        if cache is None:
            cache = DynamicCache(config=self.model.config)
        logits = None
        while position < len(prompt):  # chunks end on multiples of `chunk`, counted from position 0
            end = min(len(prompt), (position // self.chunk + 1) * self.chunk)
            ids = torch.tensor([prompt[position:end]], dtype=torch.long)
            logits = self.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
            position = end
            if self.prefix_cache:
                self.snapshots.store(tuple(prompt[:end]), cache)

        extra = {"cached_tokens": hit} if self.prefix_cache else {}  # usage.prompt_tokens_details
        eos = frozenset() if params.ignore_eos else self.eos_ids
        n_out = 0
        while True:
            if stream.cancelled.is_set():
                stream.send(TokenOutput(None, None, "abort", **extra))
                return f"{hit} restored, {n_out} generated, abort"
            token = self._choose(logits, n_out)
            if token in eos:
                stream.send(TokenOutput(None, None, "stop", **extra))
                return f"{hit} restored, {n_out} generated, stop"
            logprobs = self._logprobs(logits, token, params.top_logprobs)
            n_out += 1
            self._count(generation_tokens_total=1)
            finish = "length" if n_out >= params.max_tokens else None
            stream.send(TokenOutput(token, logprobs, finish, **extra))
            if finish:
                return f"{hit} restored, {n_out} generated, {finish}"
            ids = torch.tensor([[token]], dtype=torch.long)
            logits = self.model(input_ids=ids, cache=cache, use_cache=True).logits[0, -1]

    def _choose(self, logits, n_out: int) -> int:
        if self.mode != "tie-then-junk" or n_out < TIE_AT:
            return int(self.torch.argmax(logits))
        ranked = self.torch.topk(logits, 2).indices.tolist()
        return ranked[1] if n_out == TIE_AT else (ranked[0] + 7919) % logits.shape[-1]

    def _logprobs(self, logits, token: int, k: int | None):
        from skills.engine_api import TokenLogprob

        if k is None:
            return None
        logp = self.torch.log_softmax(logits.float(), dim=-1)
        values, ids = self.torch.topk(logp, k) if k else (logp[:0], logp[:0])
        top = tuple((int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist()))
        return TokenLogprob(token, float(logp[token]), top)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="an olmo_hybrid model folder")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--mode", choices=MODES, default="honest")
    p.add_argument("--no-prefix-cache", action="store_true", help="the optimisation off: never restore a snapshot")
    p.add_argument("--chunk", type=int, default=64, help="prefill chunk and snapshot interval, in tokens")
    p.add_argument("--max-snapshots", type=int, default=256)
    p.add_argument("--threads", type=int, default=len(usable_cpus()), help="torch intra-op threads")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from skills.openai_server import ServerInfo, serve

    torch.set_num_threads(args.threads)
    engine = HybridEngine(args.model, args.mode, not args.no_prefix_cache, args.chunk, args.max_snapshots)
    log.info("mode %s, prefix cache %s, %d torch threads", args.mode, "on" if engine.prefix_cache else "off",
             args.threads)
    info = ServerInfo(args.model.resolve().name, str(args.model), int(time.time()), server_name="hybrid-double")
    serve(engine, info, args.host, args.port)


if __name__ == "__main__":
    main()
