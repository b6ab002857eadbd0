"""Stack specs: what to launch (or where to connect) and what the stack claims to support."""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from harness.errors import HarnessError

REPO_ROOT = Path(__file__).resolve().parent.parent
# Registered names are the spec files in these folders: baselines ship with the project,
# generated stacks are published by the agent under results/stacks/<name>/stack.yaml.
SPEC_DIRS = (REPO_ROOT / "baselines" / "specs", REPO_ROOT / "results" / "stacks")
_REQUIRED = ("name", "command")
# What a server started by hand is taken to support unless its `url=` argument says more.
URL_DEFAULT_SUPPORTS = ("completions", "chat")


@dataclass(frozen=True)
class Switch:
    """How to run a stack with one of its optimisations off, for a lossless oracle's other side:
    `args` appended to its command (a second launch, e.g. `--no-spec`), or `request` fields merged
    into every request sent to the same server."""

    args: tuple[str, ...] = ()
    request: dict = field(default_factory=dict)

    def describe(self) -> str:
        return (f"relaunched with {' '.join(self.args)}" if self.args
                else f"requests with {', '.join(f'{k}={v!r}' for k, v in self.request.items())}")


@dataclass(frozen=True)
class StackSpec:
    name: str
    command: tuple[str, ...] = ()
    health: str = "/health"
    startup_timeout_s: float = 600.0
    env: dict[str, str] = field(default_factory=dict)
    supports: tuple[str, ...] = ()
    flags: dict = field(default_factory=dict)  # engine settings recorded in rows for fairness
    requires: tuple[str, ...] = ()  # hardware the stack cannot run without: "cuda"
    requires_why: str = ""  # why, where it is not obvious (shown in the not-applicable row)
    lacks: dict[str, str] = field(default_factory=dict)  # a capability it does not support: why (the row says it)
    prepare: dict[str, tuple[str, ...]] = field(default_factory=dict)  # see harness.placeholders
    extra_body: dict = field(default_factory=dict)  # engine-specific request fields sent with every request
    ignore_eos: str = "native"  # how the engine takes `ignore_eos`: native | min_tokens | unsupported
    description: str = ""
    # `off_switch` in the spec: per optimisation (a `supports` entry), how to turn it off; a
    # lossless oracle compares the stack's outputs with and without it. A feature declared without
    # one is judged against the reference only, and its verdict says so.
    off: dict[str, Switch] = field(default_factory=dict)
    path: Path | None = None  # the spec file; None for url= stacks
    url: str | None = None  # set for a server someone already runs

    @property
    def launched(self) -> bool:
        return self.url is None

    def missing(self, needs: tuple[str, ...]) -> list[str]:
        return [n for n in needs if n not in self.supports]

    def lacking(self, needs: tuple[str, ...]) -> list[str]:
        """What of `needs` it does not support, each with the spec's reason where it gives one."""
        return [f"does not support {n}" + (f" ({self.lacks[n]})" if n in self.lacks else "") for n in self.missing(needs)]

    def adapt(self, payload: dict) -> dict:
        """A request in this engine's dialect: its extra fields, and `ignore_eos` as it understands it."""
        body = {**payload, **self.extra_body}
        if self.ignore_eos == "min_tokens" and body.pop("ignore_eos", False):
            body["min_tokens"] = body.get("max_tokens") or body.get("max_completion_tokens")
        return body

    def with_off(self, feature: str) -> StackSpec:
        """This stack with `feature` switched off as its `off_switch` says: launched with the extra
        arguments, or sending the request fields with every request. It no longer claims the feature."""
        switch = self.off[feature]
        return replace(self, name=f"{self.name}.{feature}-off", command=self.command + switch.args,
                       extra_body={**self.extra_body, **switch.request},
                       supports=tuple(s for s in self.supports if s != feature), off={})

    def unmet(self) -> list[str]:
        """Hardware this stack requires that this machine lacks."""
        return [r for r in self.requires if r == "cuda" and not shutil.which("nvidia-smi")]

    def info(self) -> dict:
        return {
            "name": self.name,
            "spec": str(self.path.relative_to(REPO_ROOT)) if self.path and self.path.is_relative_to(REPO_ROOT) else (str(self.path) if self.path else None),
            "url": self.url,
            "command": list(self.command),
            "supports": list(self.supports),
            "flags": dict(self.flags),
            "extra_body": dict(self.extra_body),
            "ignore_eos": self.ignore_eos,
            "off": {k: {"args": list(v.args), "request": dict(v.request)} for k, v in self.off.items()},
        }


def load_spec(path: Path, vocabulary: frozenset[str] | None = None) -> StackSpec:
    """A spec file; `vocabulary` (the settings' words, see harness.scenario.vocabulary) checks its
    `supports` for typos."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise HarnessError(f"cannot read stack spec {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise HarnessError(f"stack spec {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise HarnessError(f"stack spec {path} must be a mapping with keys {', '.join(_REQUIRED)}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise HarnessError(f"stack spec {path} is missing {', '.join(missing)}")
    command = data["command"]
    if not isinstance(command, list) or not command or not all(isinstance(c, (str, int, float)) for c in command):
        raise HarnessError(f"stack spec {path}: command must be a non-empty list of strings")
    supports = tuple(data.get("supports") or ())
    unknown = [s for s in supports if vocabulary is not None and s not in vocabulary]
    if unknown:
        raise HarnessError(f"stack spec {path}: unknown supports {unknown}; the settings know: "
                           f"{', '.join(sorted(vocabulary))}")
    return StackSpec(
        name=str(data["name"]),
        command=tuple(str(c) for c in command),
        health=str(data.get("health", "/health")),
        startup_timeout_s=float(data.get("startup_timeout_s", 600)),
        env={str(k): str(v) for k, v in (data.get("env") or {}).items()},
        supports=supports,
        flags=dict(data.get("flags") or {}),
        requires=tuple(data.get("requires") or ()),
        requires_why=str(data.get("requires_why") or ""),
        lacks={str(k): str(v) for k, v in (data.get("lacks") or {}).items()},
        prepare={str(k): tuple(str(c) for c in v) for k, v in (data.get("prepare") or {}).items()},
        extra_body=dict(data.get("extra_body") or {}),
        ignore_eos=_choice(path, data, "ignore_eos", ("native", "min_tokens", "unsupported")),
        description=str(data.get("description", "")),
        off=_switches(path, data.get("off_switch"), supports),
        path=path.resolve(),
    )


def _switches(path: Path, data, supports: tuple[str, ...]) -> dict[str, Switch]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HarnessError(f"stack spec {path}: off_switch must map a supported feature to {{args: [...]}} or {{request: {{...}}}}")
    out = {}
    for feature, how in data.items():
        if feature not in supports:
            raise HarnessError(f"stack spec {path}: off_switch names {feature!r}, which the stack does not support")
        if not isinstance(how, dict) or set(how) - {"args", "request"} or not (how.get("args") or how.get("request")):
            raise HarnessError(f"stack spec {path}: off_switch.{feature} must be {{args: [...]}} or {{request: {{...}}}}")
        args, request = how.get("args") or [], how.get("request") or {}
        if not isinstance(args, list) or not isinstance(request, dict):
            raise HarnessError(f"stack spec {path}: off_switch.{feature}: args is a list, request a mapping")
        out[str(feature)] = Switch(tuple(str(a) for a in args), dict(request))
    return out


def _choice(path: Path, data: dict, key: str, allowed: tuple[str, ...]) -> str:
    value = str(data.get(key, allowed[0]))
    if value not in allowed:
        raise HarnessError(f"stack spec {path}: {key} must be one of {', '.join(allowed)}")
    return value


def registered() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in SPEC_DIRS:
        for path in sorted(folder.glob("*.yaml")) + sorted(folder.glob("*/stack.yaml")):
            name = path.parent.name if path.name == "stack.yaml" else path.stem
            found.setdefault(name, path)
    return found


def _url_stack(arg: str, vocabulary: frozenset[str] | None) -> StackSpec:
    """`url=http://host:port[,supports=chat+logprobs]`: a server someone started by hand. It is
    taken to support only what the argument says (the plain endpoints when it says nothing)."""
    url, *options = arg[len("url="):].split(",")
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise HarnessError(f"--stack {arg}: the url must start with http:// or https://")
    supports = URL_DEFAULT_SUPPORTS
    for option in options:
        key, _, value = option.partition("=")
        if key != "supports" or not value:
            raise HarnessError(f"--stack {arg}: after the url comes ,supports=a+b (got {option!r})")
        supports = tuple(value.split("+"))
    unknown = [s for s in supports if vocabulary is not None and s not in vocabulary]
    if unknown:
        raise HarnessError(f"--stack {arg}: unknown supports {unknown}; the settings know: {', '.join(sorted(vocabulary))}")
    return StackSpec(name=f"url:{url.split('://', 1)[1]}", supports=supports, url=url)


# `--stack NAME@A+B`: the stack scored on settings A and B only.
SCOPE = re.compile(r"@([A-Za-z](?:\+[A-Za-z])*)$")
# `--stack NAME.FEATURE-off`: a registered stack relaunched with its off_switch for FEATURE.
OFF_VARIANT = re.compile(r"(.+)\.([A-Za-z0-9_]+)-off")


def resolve_stack(arg: str, vocabulary: frozenset[str] | None = None) -> StackSpec:
    """`--stack` value: `url=http://host:port[,supports=...]`, a spec file path, or a registered name."""
    if arg.startswith("url="):
        return _url_stack(arg, vocabulary)
    path = Path(arg)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise HarnessError(f"--stack {arg}: no such spec file")
        return load_spec(path, vocabulary)
    names = registered()
    off = OFF_VARIANT.fullmatch(arg)
    if arg not in names and off and off.group(1) in names:
        base = load_spec(names[off.group(1)], vocabulary)
        if off.group(2) not in base.off:
            raise HarnessError(f"--stack {arg}: {base.name} has no off_switch for {off.group(2)!r} "
                               f"(it has: {', '.join(base.off) or 'none'})")
        return base.with_off(off.group(2))
    if arg not in names:
        raise HarnessError(f"--stack {arg}: unknown stack; registered: {', '.join(sorted(names)) or 'none'}; or give a spec path or url=...")
    return load_spec(names[arg], vocabulary)
