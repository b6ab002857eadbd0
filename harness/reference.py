"""Reference outputs from plain transformers, computed once per (weights, prompts, lengths) and cached."""
from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

from harness.assets import cache_root, weights_checksum
from harness.atomic import atomic_write_json
from harness.errors import HarnessError
from harness.generation import INCOMPLETE, Generation, Prompt
from harness.grammar import GRAMMAR_OPTIONS, Constraint, GrammarError

TOP_K = 5
# Prompts decoded together. On 2 cores 8 to 16 are 2.5x to 3x faster than one at a time; memory
# grows with the batch's K/V cache (SmolLM2-135M, 12 prompts of up to 550 tokens: about 0.5 GB more).
BATCH_SIZE = 16


def cache_key(model_dir: Path, prompts: list[Prompt], top_k: int) -> str:
    """What a list of prompts' references depend on; one prompt's is its cache file's name."""
    import torch
    import transformers

    blob = json.dumps({
        "weights": weights_checksum(model_dir),
        "prompts": [p.reference_key() for p in prompts],
        "top_k": top_k,
        "compute": "float32",
        "format": 2,  # a Generation with its tokens' ends
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    } | ({"grammar": _grammar_version()} if any(p.response_format for p in prompts) else {}), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _grammar_version() -> str:
    import llguidance

    return f"llguidance {llguidance.__version__}, {GRAMMAR_OPTIONS}"


def input_ids(tokenizer, prompt: Prompt) -> list[int]:
    if prompt.ids is not None:
        return list(prompt.ids)
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
                       log: Callable[[str], None] = lambda _: None,
                       batch_size: int = BATCH_SIZE) -> list[Generation]:
    """Greedy generations in float32 compute, with the top-k logprobs of every step; prompts of
    similar length are decoded together, `batch_size` at a time, each exactly as it would be alone
    (up to float rounding: see `_greedy_batch`)."""
    import torch

    tok, model = reference_model(model_dir)
    eos = frozenset(_eos_ids(model.generation_config.eos_token_id))
    rows = [_Row(input_ids(tok, p), p.max_tokens, frozenset() if p.ignore_eos else eos, _constraint(tok, p, eos))
            for p in prompts]
    batches = _batches([len(r.ids) for r in rows], batch_size)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for n, batch in enumerate(batches):
        log(f"reference batch {n + 1}/{len(batches)}: {', '.join(prompts[i].id for i in batch)}")
        with torch.inference_mode():
            _greedy_batch(model, [rows[i] for i in batch], pad, top_k)
    return [_generation(tok, row, eos, p.ignore_eos) for row, p in zip(rows, prompts)]


def constraint_for(model, tok, prompt: Prompt) -> Constraint | None:
    """The grammar `prompt`'s response_format puts on `model`'s decoding, as the reference decodes
    under it."""
    return _constraint(tok, prompt, frozenset(_eos_ids(model.generation_config.eos_token_id)))


def _constraint(tok, prompt: Prompt, eos: frozenset[int]) -> Constraint | None:
    if not prompt.response_format:
        return None
    if prompt.ignore_eos:
        raise GrammarError(f"prompt {prompt.id}: a response_format ends on end-of-sequence; ignore_eos cannot go with it")
    return Constraint(tok, prompt.response_format, tuple(sorted(eos)))


@lru_cache(maxsize=1)  # loaded once, not per judged cell (3 s each on 2 cores); one model at a time
def reference_model(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoTokenizer.from_pretrained(model_dir),
            AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval())


def _eos_ids(configured: int | list[int] | None) -> list[int]:
    return [i for i in (configured if isinstance(configured, list) else [configured]) if i is not None]


@dataclass
class _Row:
    """One prompt's greedy decoding: it ends after `limit` tokens or on a token in `stops` (the
    end-of-sequence ids, or none for `ignore_eos`: end-of-sequence stays choosable then, as a
    server's `ignore_eos` has it, where generate's min_new_tokens would forbid it)."""

    ids: list[int]
    limit: int
    stops: frozenset[int]
    constraint: Constraint | None = None  # the request's response_format: masked greedy decoding
    tokens: list[int] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)  # per step: (id, logprob), best first

    def done(self) -> bool:
        return len(self.tokens) >= self.limit or (bool(self.tokens) and self.tokens[-1] in self.stops)


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by prompt length, so that little of a batch is padding."""
    order, size = sorted(range(len(lengths)), key=lambda i: lengths[i]), max(1, batch_size)
    return [order[i:i + size] for i in range(0, len(order), size)]


def _greedy_batch(model, rows: list[_Row], pad_id: int, top_k: int) -> None:
    """Greedy decoding of `rows` together, filling in their tokens and top-k; a row leaves the
    batch (and its cache) at its own end. Prompts are left padded: the attention mask hides the
    padding and the positions count each row's own tokens only, so a row gets what it would get
    alone, save that batched float32 matmuls may round differently in the last bits. A step's
    choice is the plain argmax of the logits, as a server's temperature 0 (no processors from the
    model's generation config)."""
    import torch
    from transformers import DynamicCache

    live = [r for r in rows if not r.done()]
    if not live:
        return
    width = max(len(r.ids) for r in live)
    ids = torch.tensor([[pad_id] * (width - len(r.ids)) + r.ids for r in live])
    mask = torch.tensor([[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in live])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    kv, kv_arg = DynamicCache(config=model.config), _cache_arg(model)
    while True:
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1, **{kv_arg: kv})
        logits = _masked(out.logits[:, -1].float(), live)
        chosen = logits.argmax(-1)
        values, idx = torch.log_softmax(logits, dim=-1).topk(top_k)
        for row, token, v, i in zip(live, chosen.tolist(), values.tolist(), idx.tolist()):
            row.tokens.append(token)
            row.top.append([(t, lp) for t, lp in zip(i, v) if lp != float("-inf")])  # allowed ones only
            if row.constraint is not None:
                row.constraint.consume(token)
        keep = [j for j, row in enumerate(live) if not row.done()]
        if not keep:
            return
        if len(keep) < len(live):
            kept = torch.tensor(keep)
            kv.batch_select_indices(kept)
            live, mask, positions, chosen = [live[j] for j in keep], mask[kept], positions[kept], chosen[kept]
        ids = chosen[:, None]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=-1)
        positions = positions[:, -1:] + 1


def _masked(logits, rows: list[_Row]):
    """Each constrained row's logits with what its grammar forbids at -inf (its top-k and argmax
    are then over the allowed tokens, renormalised)."""
    for j, row in enumerate(rows):
        if row.constraint is not None:
            logits[j] = row.constraint.mask(logits[j])
    return logits


def _cache_arg(model) -> str:
    """What the model's forward calls its K/V cache: transformers renamed `past_key_values` to
    `cache` (the old name still works there, with a deprecation warning)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _generation(tok, row: _Row, eos: frozenset[int], ignore_eos: bool) -> Generation:
    top = [_by_text(tok, step) for step in row.top]
    stopped = bool(row.tokens) and row.tokens[-1] in eos and not ignore_eos
    kept = row.tokens[:-1] if stopped else row.tokens
    prefixes = [_text(tok, kept[:j + 1]) for j in range(len(kept))]  # the last is the whole text
    return Generation(tokens=[tok.decode([i]) for i in kept], top=top, finish_reason="stop" if stopped else "length",
                      text=prefixes[-1] if prefixes else "", ends=[len(p.rstrip(INCOMPLETE)) for p in prefixes])


def _by_text(tok, step: list[tuple[int, float]]) -> dict[str, float]:
    """One step's top-k by printed string, best first. Ids that print alike (bytes of different
    multi-byte characters all print U+FFFD) keep an entry each: a later one gets one more U+FFFD,
    so a byte the reference passed over still counts as its runner-up."""
    top: dict[str, float] = {}
    for i, logprob in step:
        text = tok.decode([i])
        while text in top and INCOMPLETE in text:
            text += INCOMPLETE
        top.setdefault(text, float(logprob))
    return top


def _text(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


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
