"""Test-double stack for setting E (JSON-schema constrained decoding): a real model decoding under
the request's schema done right, and three ways wrong.

It serves a transformers model folder (the tiny one: SmolLM2-135M-Instruct) behind the shared
OpenAI layer (skills/openai_server), one request at a time, greedy only, float32. Under a
response_format it masks, at every step, what llguidance's grammar for the schema forbids (the
harness's own `Constraint`, which is fine for a double), reports the masked logprobs, and counts
in `/metrics` `jump_forward_tokens` the tokens the grammar forced (one allowed token: no choice was
made). `--no-jump-forward` is the stack with its shortcut off (the spec's off switch): the same
decoding, nothing counted.

`--mode`:
- honest:      as above; its outputs are plain masked greedy decoding.
- other-valid: decodes under the request's schema but for another prompt (a fixed one): valid JSON
               that follows the schema, not what the model says for this request.
- ignores:     accepts response_format and decodes without it (mlx-lm's behaviour).
- fast-path:   with jump-forward on, takes the runner-up allowed token at the fifth free choice:
               still valid JSON, not the text of the same stack with jump-forward off.

    python tests/stacks/schema_double.py --model DIR --port P [--mode honest] [--no-jump-forward]
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never talk to a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import logging
import time
from pathlib import Path

from harness.machine import usable_cpus
from skills.openai_server.serial import SerialEngine

MODES = ("honest", "other-valid", "ignores", "fast-path")
OTHER_PROMPT = "Reply with a JSON object."
FLIPPED_CHOICE = 5  # fast-path: which free choice (counted from 1) takes the runner-up

log = logging.getLogger("schema-double")


class SchemaEngine(SerialEngine):
    """A `ServingEngine` (skills/engine_api) decoding greedily under a grammar."""

    def __init__(self, model_dir: Path, mode: str, jump_forward: bool) -> None:
        import torch

        from baselines.hf_reference.loader import load_model

        super().__init__(("forward_passes", "generation_tokens_total", "jump_forward_tokens"), "schema", log)
        loaded = load_model(model_dir, "float32", "cpu")
        self.torch = torch
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.eos_ids = loaded.eos_ids
        self.max_model_len = loaded.max_model_len
        self.vocab_size = loaded.vocab_size
        self.mode = mode
        self.jump_forward = jump_forward
        self.runtime = {"mode": mode, "jump_forward": jump_forward}
        self.model.register_forward_pre_hook(lambda *_: self._count(forward_passes=1))

    def check_response_format(self, fmt: dict) -> None:
        from harness.grammar import GrammarError, grammar_of

        try:
            grammar_of(fmt)
        except GrammarError as exc:
            raise ValueError(str(exc)) from None

    def reset_prefix_cache(self) -> bool:
        return True  # no prefix cache

    def _constraint(self, params):
        from harness.grammar import Constraint

        if params.response_format is None or self.mode == "ignores":
            return None
        return Constraint(self.tokenizer, params.response_format, tuple(sorted(self.eos_ids)))

    def _generate(self, prompt: list[int], params, stream) -> str:
        with self.torch.inference_mode():
            return self._decode(prompt, params, stream)

    def _decode(self, prompt: list[int], params, stream) -> str:
        from transformers import DynamicCache

        from skills.engine_api import TokenOutput

        torch = self.torch
        constraint = self._constraint(params)
        if constraint is not None and self.mode == "other-valid":
            prompt = self.tokenizer(OTHER_PROMPT)["input_ids"]
        cache = DynamicCache(config=self.model.config)
        ids = torch.tensor([prompt], dtype=torch.long)
        logits = self.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
        eos = frozenset() if params.ignore_eos else self.eos_ids
        n_out, free = 0, 0
        while True:
            if stream.cancelled.is_set():
                stream.send(TokenOutput(None, None, "abort"))
                return f"{n_out} generated, abort"
            masked = constraint.mask(logits.float()) if constraint is not None else logits.float()
            allowed = int(torch.isfinite(masked).sum())
            token = int(torch.argmax(masked))
            if allowed == 1 and self.jump_forward:
                self._count(jump_forward_tokens=1)
            elif allowed > 1:
                free += 1
                if self.mode == "fast-path" and self.jump_forward and free == FLIPPED_CHOICE:
                    token = int(torch.topk(masked, 2).indices[1])
            if constraint is not None:
                constraint.consume(token)
            if token in eos:
                stream.send(TokenOutput(None, None, "stop"))
                return f"{n_out} generated, stop"
            n_out += 1
            self._count(generation_tokens_total=1)
            finish = "length" if n_out >= params.max_tokens else None
            stream.send(TokenOutput(token, self._logprobs(masked, token, params.top_logprobs), finish))
            if finish:
                return f"{n_out} generated, {finish}"
            step = torch.tensor([[token]], dtype=torch.long)
            logits = self.model(input_ids=step, cache=cache, use_cache=True).logits[0, -1]

    def _logprobs(self, logits, token: int, k: int | None):
        from skills.engine_api import TokenLogprob

        if k is None:
            return None
        logp = self.torch.log_softmax(logits, dim=-1)
        values, ids = self.torch.topk(logp, k) if k else (logp[:0], logp[:0])
        top = tuple((int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist()) if v != float("-inf"))
        return TokenLogprob(token, float(logp[token]), top)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--mode", choices=MODES, default="honest")
    p.add_argument("--no-jump-forward", action="store_true", help="the shortcut off: forced tokens not counted")
    p.add_argument("--threads", type=int, default=len(usable_cpus()), help="torch intra-op threads")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from skills.openai_server import ServerInfo, serve

    torch.set_num_threads(args.threads)
    engine = SchemaEngine(args.model, args.mode, not args.no_jump_forward)
    info = ServerInfo(args.model.resolve().name, str(args.model), int(time.time()), server_name="schema-double")
    serve(engine, info, args.host, args.port)


if __name__ == "__main__":
    main()
