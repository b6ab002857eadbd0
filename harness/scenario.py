"""A scenario spec: one YAML per setting, with profiles that share their keys."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.errors import HarnessError


@dataclass(frozen=True)
class LeaderboardSpec:
    """How the leaderboard ranks stacks on a setting."""

    primary: str  # a metric key of the rows, e.g. "output_throughput"
    direction: str  # "higher" or "lower" is better
    columns: tuple[str, ...]  # metric keys shown, primary first
    load_point: str = "last"  # which load point's row the table reads: "last" or a label
    labels: dict[str, str] = field(default_factory=dict)  # column headings for the scenario's own metric keys
    plot: tuple[str, ...] = ()  # metric keys drawn per load point; default: the primary alone
    x: str | None = None  # the plot's x axis: a key of the YAML's load points (default: rate, else concurrency)


@dataclass(frozen=True)
class ScenarioSpec:
    setting: str  # "A".."G"
    name: str
    title: str
    needs: dict[str, tuple[str, ...]]  # per test kind, the `supports` entries a stack must declare
    leaderboard: LeaderboardSpec
    profiles: dict[str, dict] = field(repr=False)
    path: Path | None = None
    # Optimisations a stack may declare in `supports` on this setting (its oracle judges them), as
    # OpenAI's predicted outputs; with `needs`, the words a stack spec may use.
    features: tuple[str, ...] = ()
    unit: str = "tokens"  # what its transport's events carry: tokens, audio_s, images
    # The scenario's own metrics, computed on every cell beside the harness's: {name: "module:function"}.
    metrics: dict[str, str] = field(default_factory=dict)

    def needs_for(self, kind: str) -> tuple[str, ...]:
        return self.needs.get(kind, self.needs.get("all", ()))

    @property
    def vocabulary(self) -> frozenset[str]:
        points = [point.get("needs") or () for profile in self.profiles.values()
                  for point in ((profile or {}).get("load") or {}).get("points") or ()]
        return frozenset(self.features).union(*self.needs.values(), *points)

    def profile(self, name: str) -> dict:
        if name not in self.profiles:
            raise HarnessError(
                f"unknown profile {name!r} for setting {self.setting} ({self.path}); "
                f"known: {', '.join(sorted(self.profiles))}"
            )
        return self.profiles[name]


def _check_profiles_share_keys(path: Path, profiles: dict[str, dict]) -> None:
    keysets = {name: set(p) for name, p in profiles.items()}
    first_name, first = next(iter(keysets.items()))
    for name, keys in keysets.items():
        if keys != first:
            diff = sorted(keys ^ first)
            raise HarnessError(f"{path}: profiles {first_name!r} and {name!r} differ in keys {diff}")


def _needs(raw) -> dict[str, tuple[str, ...]]:
    """`needs: [a, b]` applies to every test; `needs: {accuracy: [...], performance: [...]}` per test."""
    if isinstance(raw, list):
        return {"all": tuple(raw)}
    return {str(kind): tuple(v) for kind, v in (raw or {}).items()}


def load_scenario(path: Path) -> ScenarioSpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise HarnessError(f"cannot read scenario {path}: {exc}".splitlines()[0]) from None
    try:
        board = data["leaderboard"]
        profiles = data["profiles"]
        spec = ScenarioSpec(
            setting=str(data["setting"]),
            name=str(data["name"]),
            title=str(data.get("title", data["name"])),
            needs=_needs(data.get("needs")),
            leaderboard=LeaderboardSpec(
                primary=board["primary"],
                direction=board["direction"],
                columns=tuple(board["columns"]),
                load_point=str(board.get("load_point", "last")),
                labels={str(k): str(v) for k, v in (board.get("labels") or {}).items()},
                plot=tuple(str(k) for k in board.get("plot") or (board["primary"],)),
                x=str(board["x"]) if board.get("x") else None,
            ),
            profiles=profiles,
            path=path,
            features=tuple(str(f) for f in data.get("features") or ()),
            metrics={str(k): str(v) for k, v in (data.get("metrics") or {}).items()},
            unit=str(data.get("unit", "tokens")),
        )
    except (KeyError, TypeError) as exc:
        raise HarnessError(f"scenario {path} is missing {exc}") from None
    if spec.leaderboard.direction not in ("higher", "lower"):
        raise HarnessError(f"{path}: leaderboard.direction must be 'higher' or 'lower'")
    if not profiles:
        raise HarnessError(f"{path}: no profiles")
    _check_profiles_share_keys(path, profiles)
    _check_load_point_named(path, spec)
    return spec


POINT_KEYS = ("request_rate", "concurrency", "max_concurrency", "needs")


def load_points(load: dict) -> list:
    """A profile's `load` section as LoadPoints, in its order (keys other than the harness's are
    the point's own `params`; `needs`: what a stack must support for this point, as a test's)."""
    from harness.loadgen import LoadPoint

    return [LoadPoint(num_prompts=load.get("num_prompts") or 0, request_rate=p.get("request_rate"),
                      concurrency=p.get("concurrency"), max_concurrency=p.get("max_concurrency", load.get("max_concurrency")),
                      burstiness=load.get("burstiness", 1.0), warmup=load.get("warmup", 0),
                      seed=load.get("seed", 0) + i, params={k: v for k, v in p.items() if k not in POINT_KEYS},
                      needs=tuple(p.get("needs") or ()))
            for i, p in enumerate(load.get("points") or [])]


def names_point(label: str, choice: str) -> bool:
    """Whether a load point's label is the one `choice` names: the label, or some of its comma-separated parts."""
    return set(choice.split(",")) <= set(label.split(","))


def _check_load_point_named(path: Path, spec: ScenarioSpec) -> None:
    """`leaderboard.load_point` must name a point of every profile ("last", a label such as
    "conc=1", or parts of one such as "tail=128"): a name that matches none empties the table."""
    choice = spec.leaderboard.load_point
    if choice == "last":
        return
    for name, profile in spec.profiles.items():
        labels = [p.label for p in load_points((profile or {}).get("load") or {})]
        if labels and not any(names_point(label, choice) for label in labels):
            raise HarnessError(f"{path}: leaderboard.load_point {choice!r} names no load point of profile "
                               f"{name!r} ({', '.join(labels)})")


def find_scenarios(directory: Path) -> list[ScenarioSpec]:
    return [load_scenario(p) for p in sorted(Path(directory).glob("*.yaml"))]


def vocabulary(scenarios: list[ScenarioSpec]) -> frozenset[str]:
    """Every word a stack's `supports` may hold: what the settings need or let a stack claim."""
    return frozenset().union(*(s.vocabulary for s in scenarios))
