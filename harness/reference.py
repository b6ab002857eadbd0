"""Reference outputs from plain transformers, computed once per (weights, prompts, lengths) and cached."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from harness.assets import cache_root, weights_checksum
from harness.atomic import atomic_write_json
from harness.generation import Generation, Prompt

TOP_K = 5


def cache_key(model_dir: Path, prompts: list[Prompt], top_k: int) -> str:
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


def eos_strings(model_dir: Path) -> set[str]:
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = GenerationConfig.from_pretrained(model_dir).eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    return {tok.decode([i]) for i in ids if i is not None} | ({tok.eos_token} if tok.eos_token else set())


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
            res = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=prompt.max_tokens, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=tok.pad_token_id or 0,
                                 repetition_penalty=None, temperature=None, top_p=None, top_k=None)
        new = res.sequences[0, ids.shape[1]:].tolist()
        top = []
        for step in res.logits:
            values, idx = torch.log_softmax(step[0].float(), dim=-1).topk(top_k)
            top.append({tok.decode([i]): float(v) for v, i in zip(values.tolist(), idx.tolist())})
        stopped = bool(new) and new[-1] in eos
        kept = new[:-1] if stopped else new
        out.append(Generation(tokens=[tok.decode([i]) for i in kept], top=top,
                              finish_reason="stop" if stopped else "length", text=tok.decode(kept)))
    return out


def reference_outputs(model_dir: Path, prompts: list[Prompt], top_k: int = TOP_K,
                      log: Callable[[str], None] = lambda _: None) -> list[Generation]:
    path = cache_root() / "references" / f"{cache_key(model_dir, prompts, top_k)}.json"
    if path.is_file():
        try:
            return [Generation.from_json(g) for g in json.loads(path.read_text())]
        except (ValueError, TypeError):
            log(f"reference cache {path.name} unreadable; recomputing")
    generations = generate_reference(model_dir, prompts, top_k, log)
    atomic_write_json(path, [g.to_json() for g in generations])
    return generations
