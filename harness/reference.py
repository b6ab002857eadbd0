"""Reference outputs from plain transformers, computed once per (weights, prompts, lengths) and cached."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path

from harness.assets import cache_root, weights_checksum
from harness.atomic import atomic_write_json
from harness.errors import HarnessError
from harness.generation import Generation, Prompt

TOP_K = 5


def cache_key(model_dir: Path, prompts: list[Prompt], top_k: int) -> str:
    """What a list of prompts' references depend on; one prompt's is its cache file's name."""
    import torch
    import transformers

    blob = json.dumps({
        "weights": weights_checksum(model_dir),
        "prompts": [p.reference_key() for p in prompts],
        "top_k": top_k,
        "compute": "float32",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def input_ids(tokenizer, prompt: Prompt) -> list[int]:
    if prompt.chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt.text}],
                                             add_generation_prompt=True, tokenize=False, **prompt.template_kwargs)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt.text)["input_ids"]


@cache  # read once per model: every accuracy pass and performance cell asks
def eos_strings(model_dir: Path) -> frozenset[str]:
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = GenerationConfig.from_pretrained(model_dir).eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    return frozenset({tok.decode([i]) for i in ids if i is not None} | ({tok.eos_token} if tok.eos_token else set()))


@cache
def special_strings(model_dir: Path) -> frozenset[str]:
    """The model's special tokens as text: what servers leave out of the text they stream."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    added = getattr(tok, "added_tokens_decoder", {}) or {}
    return frozenset(tok.all_special_tokens) | frozenset(str(t) for t in added.values() if getattr(t, "special", False))


def generate_reference(model_dir: Path, prompts: list[Prompt], top_k: int = TOP_K,
                       log: Callable[[str], None] = lambda _: None) -> list[Generation]:
    """Greedy generations in float32 compute, with the top-k logprobs of every step."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
              else [model.generation_config.eos_token_id])
    out = []
    for n, prompt in enumerate(prompts):
        log(f"reference {n + 1}/{len(prompts)}: {prompt.id}")
        ids = torch.tensor([input_ids(tok, prompt)])
        with torch.inference_mode():
            if prompt.ignore_eos:
                new, logits = _greedy_past_eos(model, ids, prompt.max_tokens)
            else:
                res = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=prompt.max_tokens, output_logits=True,
                                     return_dict_in_generate=True, pad_token_id=tok.pad_token_id or 0,
                                     repetition_penalty=None, temperature=None, top_p=None, top_k=None)
                new, logits = res.sequences[0, ids.shape[1]:].tolist(), [step[0] for step in res.logits]
        top = []
        for step in logits:
            values, idx = torch.log_softmax(step.float(), dim=-1).topk(top_k)
            top.append({tok.decode([i]): float(v) for v, i in zip(values.tolist(), idx.tolist())})
        stopped = bool(new) and new[-1] in eos and not prompt.ignore_eos
        kept = new[:-1] if stopped else new
        out.append(Generation(tokens=[tok.decode([i]) for i in kept], top=top,
                              finish_reason="stop" if stopped else "length",
                              text=tok.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False)))
    return out


# Per cache file: the sha256 of its bytes and what they hold, as this process first read or wrote
# them. Later reads are served from here, and a file whose bytes changed since (a stack rewriting
# the cache during a run) is an error, never a silently different oracle.
_MEMO: dict[str, tuple[str, Generation]] = {}


class ReferenceTampered(HarnessError):
    pass


def _load(path: Path) -> Generation | None:
    try:
        data = path.read_bytes()
    except OSError:
        data = None
    digest = hashlib.sha256(data).hexdigest() if data is not None else None
    seen = _MEMO.get(path.name)
    if seen is not None:
        if digest != seen[0]:
            raise ReferenceTampered(f"the reference cache file {path} changed during this run (something other "
                                    f"than the harness wrote it); its first reading is kept, delete the file to recompute")
        return seen[1]
    if data is None:
        return None
    try:
        stored = json.loads(data)
        generation = Generation.from_json(stored["generation"])
        if stored.get("sha256") != _content_hash(generation):
            raise ValueError("its content hash does not match")
    except (ValueError, TypeError, KeyError):
        path.unlink(missing_ok=True)  # truncated, hand-edited or of an older layout: recomputed
        return None
    _MEMO[path.name] = (digest, generation)
    return generation


def _content_hash(generation: Generation) -> str:
    return hashlib.sha256(json.dumps(generation.to_json(), sort_keys=True).encode()).hexdigest()


def _store(path: Path, generation: Generation) -> None:
    atomic_write_json(path, {"sha256": _content_hash(generation), "generation": generation.to_json()})
    _MEMO[path.name] = (hashlib.sha256(path.read_bytes()).hexdigest(), generation)


def _greedy_past_eos(model, ids, max_tokens: int):
    """Greedy decoding that goes on past end-of-sequence, which stays choosable, as a server's
    `ignore_eos` does (generate's min_new_tokens would forbid it instead)."""
    import torch

    out = model(input_ids=ids, use_cache=True)
    tokens, logits = [], []
    for _ in range(max_tokens):
        step = out.logits[0, -1]
        logits.append(step)
        tokens.append(int(step.argmax()))
        if len(tokens) == max_tokens:
            break
        out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens, logits


def reference_outputs(model_dir: Path, prompts: list[Prompt], top_k: int = TOP_K,
                      log: Callable[[str], None] = lambda _: None) -> list[Generation]:
    """The reference's output for each prompt, each cached in a file of its own (with its content
    hash) and computed once; the missing ones in one pass."""
    folder = cache_root() / "references"
    paths = [folder / f"{cache_key(model_dir, [p], top_k)}.json" for p in prompts]
    found = {path: _load(path) for path in dict.fromkeys(paths)}
    missing = [(path, p) for path, p in dict(zip(paths, prompts)).items() if found[path] is None]
    if missing:
        for (path, _), generation in zip(missing, generate_reference(model_dir, [p for _, p in missing], top_k, log)):
            _store(path, generation)
            found[path] = generation
    return [found[path] for path in paths]
