"""Setting F's workload: a pool of prompts, a seed per request, reference images, the image judge.

Requests: `POST /v1/images/generations` with `prompt` (from the pool, carrying the run's salt),
`seed` (drawn per request from the profile's seed: the accuracy pass and the cells use different
ones), `num_inference_steps` and `guidance_scale` from the profile, `response_format: b64_json`.

The reference image of a request is the plain loop's (skills/image_model.generate: every step the
whole sequence, classifier-free guidance as one doubled batch), drawn in the harness's own process
before the stack starts and held in memory only, so no stack can read or rewrite it.

Judged per image, against the reference of the same prompt and seed: a PNG of the right size whose
PSNR and SSIM reach the profile's bounds (`oracle.psnr_min_db`, `oracle.ssim_min`). An image that
cannot be decoded, or has another size, fails: a metric that cannot be computed is never skipped.
Whether each image equals its reference pixel for pixel is recorded beside (the plain loop on
another machine, or any reordering of float sums such as the text K/V reuse, moves a few pixels by
one level; a fixed image, another seed's or another prompt's, are 10-30 dB away).
"""
from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.bench import OutputsVerdict
from harness.engagement import Guard
from harness.metrics import window_s
from harness.oracle import PromptVerdict, Verdict
from harness.prompts import salted

# Short scene descriptions, as the study's pool of five: objects, places, styles.
POOL = (
    "a lighthouse on a rocky coast at dusk, oil painting",
    "a red bicycle leaning against a brick wall in the snow",
    "a bowl of ramen with a soft boiled egg, studio photo",
    "an astronaut riding a horse across a desert, digital art",
    "a small wooden cabin in a pine forest under the northern lights",
    "a close-up of a hummingbird drinking from a purple flower",
    "a futuristic city skyline at night with flying cars, neon",
    "a watercolor of a fox sleeping under a maple tree in autumn",
    "a cup of coffee on a windowsill on a rainy morning",
    "an old steam train crossing a stone bridge in the mountains",
    "a pixel art castle on a floating island",
    "a sailboat on a calm lake at sunrise, photograph",
)


@dataclass(frozen=True)
class ImageTask:
    id: str
    prompt: str
    seed: int
    steps: int
    guidance: float

    def payload(self, size: int) -> dict:
        return {"prompt": self.prompt, "seed": self.seed, "num_inference_steps": self.steps,
                "guidance_scale": self.guidance, "size": f"{size}x{size}", "n": 1}


def tasks(profile: dict, n: int, seed: int, salt: str | None, tag: str = "") -> list[ImageTask]:
    """n requests cycling over the profile's first `prompts` pool entries, each with its own seed."""
    pool = POOL[: profile["prompts"]]
    rng = random.Random(f"{seed}:{tag}")
    return [ImageTask(f"image-{tag}{i}", salted(pool[i % len(pool)], salt), rng.randrange(2**31),
                      profile["steps"], profile["guidance"]) for i in range(n)]


def accuracy_tasks(profile: dict, salt: str | None) -> list[ImageTask]:
    acc = profile["accuracy"]
    return tasks(profile, acc["images"], acc["seed"], salt, "a")


def measured_tasks(profile: dict, salt: str | None) -> list[ImageTask]:
    """The same requests at every point, so their references are drawn once a run."""
    return tasks(profile, profile["load"]["num_prompts"], profile["load"]["seed"], salt, "m")


def warmup_tasks(profile: dict, n: int, salt: str | None) -> list[ImageTask]:
    return tasks(profile, n, profile["load"]["seed"], salt, "w")


# -- references ----------------------------------------------------------------------------------
_MODELS: dict[str, object] = {}
_IMAGES: dict[tuple, np.ndarray] = {}


def _model(model_dir: Path):
    key = str(Path(model_dir).resolve())
    if key not in _MODELS:
        from transformers import AutoTokenizer

        from skills.image_model import load, tokenizer_dir

        _MODELS[key] = (load(model_dir), AutoTokenizer.from_pretrained(tokenizer_dir(model_dir)))
    return _MODELS[key]


def reference_image(model_dir: Path, task: ImageTask) -> np.ndarray:
    """The plain loop's image for this prompt and seed (H, W, 3) uint8, drawn once per process."""
    from skills.image_model import ImageRequest, generate

    key = (str(Path(model_dir).resolve()), task.prompt, task.seed, task.steps, task.guidance)
    if key not in _IMAGES:
        model, tokenizer = _model(model_dir)
        ids = tuple(tokenizer(task.prompt)["input_ids"])
        _IMAGES[key] = generate(model, ImageRequest(ids, task.seed, task.steps, task.guidance))
        _IMAGES[key].setflags(write=False)
    return _IMAGES[key]


def _config(model_dir: Path):
    from skills.image_model import ImageModelConfig

    return ImageModelConfig.load(model_dir)


def image_size(model_dir: Path) -> int:
    return _config(model_dir).image_size


# -- the judge -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bounds:
    psnr_min_db: float
    ssim_min: float

    @classmethod
    def of(cls, profile: dict) -> "Bounds":
        oracle = profile["oracle"]
        return cls(float(oracle["psnr_min_db"]), float(oracle["ssim_min"]))


def decode_png(blob: bytes | None) -> np.ndarray:
    """(H, W, 3) uint8 from PNG bytes; ValueError naming what is wrong."""
    from PIL import Image, UnidentifiedImageError

    if not blob:
        raise ValueError("no image came back")
    try:
        with Image.open(io.BytesIO(blob)) as image:
            if image.format != "PNG":
                raise ValueError(f"a {image.format} image, not a PNG")
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"the image does not decode: {exc}") from None


def compare_image(image_id: str, reference: np.ndarray, blob: bytes | None, bounds: Bounds) -> PromptVerdict:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    try:
        got = decode_png(blob)
    except ValueError as exc:
        return PromptVerdict(image_id, False, 0, 0, str(exc))
    if got.shape != reference.shape:
        return PromptVerdict(image_id, False, 0, 0, f"an image of {got.shape[1]}x{got.shape[0]}, the reference's is "
                                                    f"{reference.shape[1]}x{reference.shape[0]}")
    exact = bool(np.array_equal(got, reference))
    psnr = math.inf if exact else float(peak_signal_noise_ratio(reference, got, data_range=255))
    ssim = 1.0 if exact else float(structural_similarity(reference, got, channel_axis=-1, data_range=255))
    detail = {"exact": exact, "psnr_db": None if math.isinf(psnr) else round(psnr, 2), "ssim": round(ssim, 5),
              "pixels_off": int(np.count_nonzero(np.any(got != reference, axis=-1))),
              "max_abs_diff": int(np.abs(got.astype(np.int16) - reference).max())}
    if not (math.isfinite(psnr) or exact) or not math.isfinite(ssim):
        return PromptVerdict(image_id, False, 0, 0, "PSNR or SSIM could not be computed", detail)
    problems = []
    if psnr < bounds.psnr_min_db:
        problems.append(f"PSNR {psnr:.1f} dB < {bounds.psnr_min_db:g}")
    if ssim < bounds.ssim_min:
        problems.append(f"SSIM {ssim:.4f} < {bounds.ssim_min:g}")
    ok = not problems
    return PromptVerdict(image_id, ok, int(ok), None if ok else 0, "; ".join(problems), detail)


class ImageVerdict(Verdict):
    @property
    def summary(self) -> str:
        bad = [p for p in self.prompts if not p.ok]
        exact = sum(1 for p in self.prompts if p.detail and p.detail.get("exact"))
        psnrs = [p.detail["psnr_db"] for p in self.prompts if p.detail and p.detail.get("psnr_db") is not None]
        lowest = f", lowest PSNR {min(psnrs):.1f} dB" if psnrs else ""
        head = (f"{len(self.prompts)} images within bounds" if not bad else
                f"{len(bad)}/{len(self.prompts)} images fail; first: {bad[0].prompt_id}: {bad[0].reason}")
        return f"{head}; {exact} pixel-exact{lowest}"


def judge_images(model_dir: Path, tasks_: list[ImageTask], blobs: list[bytes | None], bounds: Bounds) -> ImageVerdict:
    return ImageVerdict([compare_image(t.id, reference_image(model_dir, t), b, bounds)
                         for t, b in zip(tasks_, blobs, strict=True)])


@dataclass(frozen=True)
class ImageCheck:
    """Every measured image of a cell against its reference (the bench's `check`)."""

    tasks: list[ImageTask]
    bounds: Bounds

    def judge(self, bench, records, cell: str) -> OutputsVerdict:
        done = [i for i, r in enumerate(records) if r.ok]
        verdict = judge_images(bench.model_dir, [self.tasks[i] for i in done], [records[i].blob for i in done],
                               self.bounds)
        return OutputsVerdict(verdict, done, len(records))


# -- engagement and metrics ----------------------------------------------------------------------
def reuse_guard(model_dir: Path, steps: int) -> Guard:
    """text_kv_reuse's evidence: /metrics prefix_rows_reused_total grew, by no more than the prefix
    rows the cell's steps hold (two guidance rows each), over at least the steps its images need."""
    prefix = _config(model_dir).prefix_length

    def within_reach(metrics: dict, moved: dict | None, _usage) -> str | None:
        ran = (moved or {}).get("denoise_steps_total", 0)
        reused = (moved or {}).get("prefix_rows_reused_total", 0)
        need = metrics.get("completed", 0) * steps
        if ran < need:
            return f"denoise_steps_total grew by {ran:g} over {need:g} steps' worth of images"
        if reused > ran * 2 * prefix:
            return f"{reused:g} prefix rows reused over {ran:g} steps is more than {prefix}-row prefixes hold"
        return None

    return Guard("text_kv_reuse", counters=("prefix_rows_reused_total",), consistency=(within_reach,))


def images_per_min(records, moved: dict | None) -> float | None:
    """Images per minute over the cell's window (the harness's, as its throughputs use)."""
    window = window_s(records)
    return 60.0 * sum(r.output_units for r in records if r.ok) / window if window > 0 else None
