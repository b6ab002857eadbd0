"""An MLX serving engine for Llama-family models: greedy decoding, one request at a time on one
worker thread, JSON-schema constraints (skills/structured_output) with jump-forward.

Per step: the last position's logits -> numpy -> the grammar's mask (-inf where disallowed) ->
argmax -> the constraint advances. Then, with jump-forward, the tokens the grammar forces are
appended at once and go through the model with the picked token in ONE forward (a multi-token
extend of the KV cache), so a forced token costs no forward of its own. `jump_forward=False`
feeds every token alone, through the same code (skills/mlx_runtime/forward.py makes the two
bit-identical in float32; NOTE.md).

Why one request at a time: setting E's latency is measured at concurrency 1, where a batch
would hold one row anyway; the worker thread keeps MLX on a single thread (its streams and the
BLAS pool are not shared with the event loop).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skills.openai_server.serial import SerialEngine

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EngineConfig:
    dtype: str = "float32"  # exact and fastest on the CPU (bf16 matmuls are MLX's own, ~2x slower)
    jump_forward: bool = True
    max_rows: int = 32  # rows per forward (a longer forced run takes several)
    prefill_chunk: int = 512  # prompt tokens per prefill forward (mlx-lm's own forward)
    threads: int | None = None  # BLAS threads (None: the library's default)


def rope_overrides(model_dir: Path) -> dict:
    """mlx-lm 0.32.2 reads `rope_theta` at the config's top level, while transformers 5 writes it
    inside `rope_parameters` (SmolLM2: 100000): unread, mlx-lm's Llama runs RoPE with its default
    10000 and the model drifts from the reference on prompts of a few hundred tokens. Pass the
    config's own value (and scaling) through `model_config`."""
    import json

    config = json.loads((model_dir / "config.json").read_text())
    params = config.get("rope_parameters") or {}
    out = {}
    if "rope_theta" not in config and "rope_theta" in params:
        out["rope_theta"] = float(params["rope_theta"])
    if config.get("rope_scaling") is None and params.get("rope_type", "default") != "default":
        out["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
    return out


class MlxEngine(SerialEngine):
    """skills/openai_server's ServingEngine over an MLX model. Build it with `MlxEngine.load`."""

    def __init__(self, model_dir: Path, config: EngineConfig = EngineConfig()) -> None:
        # the lock guards the counters and the grammar cache (event loop + worker)
        super().__init__(("forward_passes", "generation_tokens_total", "jump_forward_tokens", "grammar_compiles",
                          "grammar_cache_hits", "mask_us_total", "prefill_ms_total", "decode_ms_total"),
                         "mlx-engine", log)
        self.config = config
        # Load and calibrate on the worker: every MLX call of this engine runs on that thread.
        self._executor.submit(self._load, Path(model_dir)).result()

    # --- loading (worker thread) ---

    def _load(self, model_dir: Path) -> None:
        import mlx.core as mx
        from mlx_lm import load

        from skills.structured_output import BatchMasker, GrammarCache

        from .forward import InvariantLlama

        started = time.perf_counter()
        model, wrapper = load(str(model_dir), model_config=rope_overrides(model_dir))
        if self.config.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}")
        model.set_dtype(getattr(mx, self.config.dtype))
        mx.eval(model.parameters())
        self.mx = mx
        self.model = model
        self.tokenizer = wrapper._tokenizer  # the HF tokenizer: what skills/openai_server expects
        self.eos_ids = frozenset(int(i) for i in wrapper.eos_token_ids)
        self.eos_id = int(self.tokenizer.eos_token_id) if self.tokenizer.eos_token_id is not None else min(self.eos_ids)
        self.vocab_size = int(model.args.vocab_size)
        self.max_model_len = int(getattr(model.args, "max_position_embeddings", None) or 8192)
        self.forward = InvariantLlama(model, max_rows=self.config.max_rows)
        self.grammars = GrammarCache.from_hf(self.tokenizer, eos_ids=sorted(self.eos_ids))
        # One row, filled on this thread: llguidance's pool buys nothing for a batch of one.
        self.masker = BatchMasker(self.grammars.tokenizer.vocab_size, max_batch=1, parallel=False)
        self.runtime = {"dtype": self.config.dtype, "jump_forward": self.config.jump_forward,
                        "max_rows": self.config.max_rows,
                        "matmul_groups": {f"{p.out_features}x{p.in_features}": p.group for p in self.forward.plans},
                        "load_s": round(time.perf_counter() - started, 2)}
        log.info("loaded %s in %.1fs: %s", model_dir, time.perf_counter() - started, self.runtime)

    @classmethod
    def load(cls, model_dir: Path, config: EngineConfig = EngineConfig()) -> MlxEngine:
        return cls(model_dir, config)

    # --- ServingEngine, called from the event loop ---

    def check_response_format(self, fmt: dict) -> None:
        """Compile the schema now (cached), so a bad one is a 400 before anything is queued."""
        self._compiled(fmt)

    def reset_prefix_cache(self) -> bool:
        return True  # no prefix cache: every request prefills its prompt

    # --- helpers ---

    def _compiled(self, fmt: dict | None):
        """The compiled grammar for a response_format (None for text); SchemaError is a ValueError."""
        with self._lock:
            before = self.grammars.stats.misses
            compiled = self.grammars.get(fmt)
            if compiled is not None:
                missed = self.grammars.stats.misses - before
                self._counters["grammar_compiles"] += missed
                self._counters["grammar_cache_hits"] += 1 - missed
        return compiled

    # --- worker thread ---

    def _prefill(self, prompt: list[int]):
        """A fresh KV cache holding the prompt, and the last position's logits (mlx-lm's forward:
        both modes prefill alike, so it need not be row-invariant)."""
        from mlx_lm.models.cache import make_prompt_cache

        mx = self.mx
        cache = make_prompt_cache(self.model)
        step = self.config.prefill_chunk
        for i in range(0, len(prompt), step):
            logits = self.model(mx.array(prompt[i:i + step])[None], cache=cache)[0, -1]
            mx.eval(logits)
            self._count(forward_passes=1)
        return cache, logits

    def _extend(self, tokens: list[int], cache):
        """Run new tokens through the model at the cache's end; the last one's logits."""
        mx = self.mx
        rows = self.config.max_rows
        for i in range(0, len(tokens), rows):
            logits = self.forward(tokens[i:i + rows], cache)
            mx.eval(logits)
            self._count(forward_passes=1)
        return logits

    def _generate(self, prompt: list[int], params, stream) -> str:
        from skills.engine_api import TokenOutput
        from skills.structured_output import Constraint, jump_forward

        compiled = self._compiled(params.response_format)
        constraint = Constraint(compiled, self.eos_id) if compiled is not None else None
        t0 = time.perf_counter()
        cache, logits = self._prefill(prompt)
        t1 = time.perf_counter()
        self._count(prefill_ms_total=1e3 * (t1 - t0))
        stop_ids = frozenset() if params.ignore_eos and constraint is None else self.eos_ids
        n_out = 0
        try:
            while True:
                if stream.cancelled.is_set():
                    stream.send(TokenOutput(None, None, "abort"))
                    return f"{n_out} generated, abort"
                scores = self._masked(logits, constraint)
                token = int(np.argmax(scores))
                outputs = [(token, self._logprobs(scores, token, params.top_logprobs))]
                if constraint is not None:
                    constraint.advance(token)
                    if self.config.jump_forward and not constraint.ended:
                        forced = jump_forward(constraint, params.max_tokens - n_out - 1)
                        self._count(jump_forward_tokens=len(forced))
                        outputs += [(t, self._forced_logprobs(t, params.top_logprobs)) for t in forced]
                sent, reason = self._emit(outputs, stop_ids, n_out, params.max_tokens, stream)
                n_out += sent
                if reason is not None:
                    return f"{n_out} generated, {reason}"
                logits = self._extend([t for t, _ in outputs], cache)
        finally:
            self._count(decode_ms_total=1e3 * (time.perf_counter() - t1))

    def _emit(self, outputs, stop_ids, n_out: int, max_tokens: int, stream) -> tuple[int, str | None]:
        """Send the step's tokens; returns how many counted as output and the finish reason
        (EOS: a finish-only output; the max_tokens-th token carries "length")."""
        from skills.engine_api import TokenOutput

        batch, sent, reason = [], 0, None
        for token, logprobs in outputs:
            if token in stop_ids:
                batch.append(TokenOutput(None, None, "stop"))
                reason = "stop"
                break
            sent += 1
            finish = "length" if n_out + sent >= max_tokens else None
            batch.append(TokenOutput(token, logprobs, finish))
            if finish:
                reason = finish
                break
        stream.send_many(batch)
        self._count(generation_tokens_total=sent)
        return sent, reason

    def _masked(self, logits, constraint) -> np.ndarray:
        """The logits as float32 numpy, -inf where the grammar forbids (a copy: writable)."""
        scores = np.array(logits.astype(self.mx.float32), dtype=np.float32)
        if constraint is not None:
            started = time.perf_counter()
            row = self.masker.fill([constraint])
            self.masker.apply(scores[None], row)
            self._count(mask_us_total=1e6 * (time.perf_counter() - started))
        return scores

    @staticmethod
    def _logprobs(scores: np.ndarray, token: int, k: int | None):
        """The chosen token and the top k of the masked distribution (-inf entries dropped), as
        the reference computes them."""
        from skills.engine_api import TokenLogprob

        if k is None:
            return None
        finite = scores[np.isfinite(scores)]
        peak = finite.max()
        logp = scores - (peak + np.log(np.exp(finite - peak, dtype=np.float64).sum()).astype(np.float32))
        top = np.argsort(-logp, kind="stable")[:k] if k else []
        return TokenLogprob(token, float(logp[token]),
                            tuple((int(i), float(logp[i])) for i in top if np.isfinite(logp[i])))

    @staticmethod
    def _forced_logprobs(token: int, k: int | None):
        """A forced token is the only one its mask allows: logprob 0, alone in its top list."""
        from skills.engine_api import TokenLogprob

        if k is None:
            return None
        return TokenLogprob(token, 0.0, ((token, 0.0),) if k else ())
