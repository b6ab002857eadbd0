"""pytest options and fixtures for scoring stacks: `pytest scenarios/ --stack NAME --profile tiny`."""
from __future__ import annotations

import secrets
import signal
from pathlib import Path

import pytest

from harness import ledger
from harness.assets import ensure_model
from harness.bench import Bench, new_run_id
from harness.errors import HarnessError, StackError
from harness.launcher import connect, launch
from harness.prompts import repeat_salt
from harness.reference import reference_outputs
from harness.scenario import find_scenarios, load_points, load_scenario, vocabulary
from harness.stack import REPO_ROOT, SCOPE, resolve_stack

SCENARIOS_DIR = REPO_ROOT / "scenarios"
_lines: list[str] = []


def pytest_addoption(parser):
    group = parser.getgroup("servebench", "serving benchmark (scenarios/)")
    group.addoption("--stack", action="append", default=[], metavar="STACK",
                    help="stack to score: a registered name, a spec path, or url=http://host:port[,supports=chat+logprobs] "
                         "(a url stack supports completions and chat unless it says more; repeatable; default "
                         "hf-reference); NAME@A+B scores it on settings A and B only")
    group.addoption("--profile", default="tiny", help="scenario profile: tiny (CPU) or paper")
    group.addoption("--results-dir", default=str(REPO_ROOT / "results"), help="where rows and LEADERBOARD.md go")
    group.addoption("--run-id", default=None, help="label rows with this run id (default: a new one)")
    group.addoption("--repeats", type=int, default=1, help="repeat each load point this many times")
    group.addoption("--first-repeat", type=int, default=0, metavar="N",
                    help="number this session's repeats from N (each keeps its own salt); a session starting past 0 "
                         "runs only the repeated cells, the run's first having judged the rest "
                         "(`python -m harness compare --rounds` uses it)")
    group.addoption("--copy-bandwidth", action="store_true",
                    help="measure the machine's copy bandwidth and bf16 matmul speed just before and after each "
                         "concurrency-1 cell (recorded in its row; `python -m harness compare` judges bandwidth "
                         "achieved against the copies and prints both beside the cell)")
    group.addoption("--no-leaderboard", action="store_true", help="do not rewrite LEADERBOARD.md at the end")
    group.addoption("--salt", default=None, help="the run's workload salt, put into every prompt (default: a fresh "
                                                 "random one per run, so no answer table kept from before matches); "
                                                 "'none' sends the prompts unsalted, as runs before salting did "
                                                 "(the table says so)")


def _interrupted(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    # SIGTERM (a timeout, a CI runner, `kill`) ends the run as Ctrl-C does: the fixtures' teardown
    # stops every stack launched (each runs in its own session, so the signal does not reach it).
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        # Resolved up front so a wrong name is one line before anything runs.
        config.servebench_scenario_dirs = _scenario_dirs(config)
        scenarios = [s for d in config.servebench_scenario_dirs for s in find_scenarios(d)]
        config.servebench_vocabulary = vocabulary(scenarios)
        scoped = [_scoped(arg, {s.setting for s in scenarios}, config.servebench_vocabulary)
                  for arg in config.getoption("stack")]
        config.servebench_stacks = [spec for spec, _ in scoped]
        config.servebench_settings = {spec.name: settings for spec, settings in scoped}
        profile = config.getoption("profile")
        # A profile only some settings define (the agent's `smoke`) skips the others; a profile no
        # setting defines is a typo.
        if scenarios and not any(profile in s.profiles for s in scenarios):
            known = "; ".join(f"{s.setting}: {', '.join(sorted(s.profiles))}"
                             for s in sorted(scenarios, key=lambda s: s.setting))
            raise HarnessError(f"unknown profile {profile!r}: no setting defines it ({known})")
        for spec in config.servebench_stacks:
            if not spec.launched:  # a server started by hand must be up before minutes of reference outputs
                connect(spec)
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    if config.getoption("repeats") < 1:
        raise pytest.UsageError("--repeats must be at least 1")
    if config.getoption("first_repeat") < 0:
        raise pytest.UsageError("--first-repeat must be at least 0")
    config.servebench_run_id = config.getoption("run_id") or new_run_id()
    chosen = config.getoption("salt")
    config.servebench_salt = None if chosen == "none" else chosen or secrets.token_hex(4)


def _scoped(arg: str, known: set[str], words: frozenset[str]):
    """`NAME@A+B`: the stack and the settings it is scored on (None: every setting)."""
    scope = SCOPE.search(arg)
    if scope is None:
        return resolve_stack(arg, words), None
    settings = set(scope.group(1).split("+"))
    if settings - known:
        raise HarnessError(f"--stack {arg}: no setting {', '.join(sorted(settings - known))} "
                           f"(settings: {', '.join(sorted(known))})")
    return resolve_stack(arg[:scope.start()], words), settings


def _default_stack():
    try:
        return resolve_stack("hf-reference")
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None


def _scenario_of(module) -> Path:
    """A setting's YAML: beside its test module (a setting kept elsewhere, e.g. a test-only one),
    else under scenarios/."""
    name = Path(module.__file__).stem.removeprefix("test_") + ".yaml"
    beside = Path(module.__file__).with_name(name)
    return beside if beside.exists() else SCENARIOS_DIR / name


def _scenario_dirs(config) -> list[Path]:
    """scenarios/, and the folder of each test module named on the command line that has a setting
    YAML beside it: their settings' words are what stacks may declare."""
    dirs = [SCENARIOS_DIR]
    for arg in config.args:
        path = Path(arg.split("::")[0])
        path = path if path.is_absolute() else Path(config.invocation_params.dir) / path
        if path.suffix == ".py" and path.with_name(path.stem.removeprefix("test_") + ".yaml").exists():
            dirs.append(path.parent.resolve())
    return list(dict.fromkeys(dirs))


def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "stack_spec" in metafunc.fixturenames:
        specs = config.servebench_stacks or [_default_stack()]
        setting = load_scenario(_scenario_of(metafunc.module)).setting
        specs = [s for s in specs if (only := config.servebench_settings.get(s.name)) is None or setting in only]
        metafunc.parametrize("stack_spec", specs, ids=[s.name for s in specs], scope="module")
    if "load_point" in metafunc.fixturenames:
        scenario = load_scenario(_scenario_of(metafunc.module))
        if config.getoption("profile") not in scenario.profiles:
            metafunc.parametrize("load_point,repeat", [])  # collected as skipped: see the `profile` fixture
            return
        points = load_points(scenario.profile(config.getoption("profile"))["load"])
        repeats = _repeats(config)
        cells = [(p, r) for p in points for r in repeats]
        # Test ids avoid "=" so that `-k "rate-1.0"` selects a cell.
        ids = [p.label.replace("=", "-").replace(",", "-") + (f"-r{r}" if repeats != range(1) else "") for p, r in cells]
        metafunc.parametrize("load_point,repeat", cells, ids=ids)



def _repeats(config) -> range:
    first = config.getoption("first_repeat")
    return range(first, first + config.getoption("repeats"))


def pytest_collection_modifyitems(session, config, items):
    """Run one stack's cells together, stacks in the order given, so only one stack is up at a time.

    pytest's own grouping of parametrized module fixtures interleaves stacks once load points are
    parametrized too; two engines alive at once skew each other (vLLM's engine busy-polls a core).
    A session numbering its repeats past 0 is a later round of a run: only repeated cells run.
    """
    if config.getoption("first_repeat") > 0:
        repeated = [item for item in items if "repeat" in getattr(getattr(item, "callspec", None), "params", {})]
        if len(repeated) < len(items):
            config.hook.pytest_deselected(items=[item for item in items if item not in repeated])
            items[:] = repeated
    modules = {}
    for item in items:
        modules.setdefault(item.module.__name__ if item.module else "", len(modules))
    names = [s.name for s in config.servebench_stacks] or ["hf-reference"]

    def stack_of(item) -> int:
        spec = getattr(item, "callspec", None) and item.callspec.params.get("stack_spec")
        return names.index(spec.name) if spec is not None and spec.name in names else -1

    items.sort(key=lambda item: (modules[item.module.__name__ if item.module else ""], stack_of(item)))


@pytest.fixture(scope="module")
def scenario(request):
    return load_scenario(_scenario_of(request.module))


@pytest.fixture(scope="module")
def profile(request, scenario):
    name = request.config.getoption("profile")
    if name not in scenario.profiles:
        pytest.skip(f"setting {scenario.setting} has no profile {name!r} (known: {', '.join(sorted(scenario.profiles))})")
    return scenario.profile(name)


@pytest.fixture(scope="module")
def model_dir(profile):
    if profile["model"] is None:  # a setting whose stacks need no model of ours (test doubles)
        return None
    try:
        return ensure_model(profile["model"])
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def bench(request, stack_spec, scenario, profile, model_dir):
    """A running stack for this scenario, wrapped in a Bench that writes rows for this run."""
    config = request.config
    results_dir = Path(config.getoption("results_dir"))
    unmet = [f"needs {r.upper()}" + (f" ({stack_spec.requires_why})" if stack_spec.requires_why else "")
             for r in stack_spec.unmet()]
    usable = any(not stack_spec.missing(needs) for needs in scenario.needs.values()) or not scenario.needs
    running, failed = None, None
    if not unmet and usable:
        # every repeat's salt: each repeat sends its own prompts (harness.prompts.repeat_salt)
        salts = [repeat_salt(config.servebench_salt, r) for r in _repeats(config)]
        if _accuracy_selected(request):
            for salt in salts:
                _reference_first(request.module, profile, model_dir, salt)
        held = getattr(request.module, "hold_references", None)
        if held is not None and model_dir is not None:
            for salt in salts:
                held(profile, model_dir, salt, _lines.append)
        log_dir = results_dir / "runs" / config.servebench_run_id / "logs"
        try:
            running = launch(stack_spec, model_dir or Path.cwd(), log_dir, scenario=scenario.name,
                             startup_timeout_s=profile.get("stack_startup_timeout_s"))
        except HarnessError as exc:
            failed = str(exc)
    b = Bench(run_id=config.servebench_run_id, results_dir=results_dir, scenario=scenario,
              profile=config.getoption("profile"), spec=stack_spec, stack=running, model_dir=model_dir,
              log=_lines.append, unmet=unmet, startup_timeout_s=profile.get("stack_startup_timeout_s"),
              salt=config.servebench_salt, copy_bandwidth=config.getoption("copy_bandwidth"))
    if failed:
        b.failed_start(failed)
        pytest.fail(failed, pytrace=False)
    yield b
    if running is not None:
        running.stop()


def _accuracy_selected(request) -> bool:
    """Whether this module's accuracy test runs in this session (with `-k rate-inf` it does not,
    and its references, fresh each run as prompts are salted, need not be computed)."""
    return any(getattr(item, "module", None) is request.module and getattr(item, "originalname", "") == "test_accuracy"
               for item in request.session.items)


def _reference_first(module, profile: dict, model_dir: Path | None, salt: str | None) -> None:
    # A setting whose references are not text prompts (a transcript of each audio prefix) names
    # `hold_references(profile, model_dir, salt, log)` instead: called here too, before the stack starts.
    """The reference outputs a scenario module names (`reference_prompts(profile, salt)` -> prompts,
    top-k) are computed or read before the stack starts; the harness then holds them, and a stack
    that rewrites the cache files is caught (harness/reference.py)."""
    named = getattr(module, "reference_prompts", None)
    if named is not None and model_dir is not None:
        prompts, top_k = named(profile, salt)
        reference_outputs(model_dir, prompts, top_k, _lines.append)


@pytest.fixture
def live_bench(request, bench):
    """The bench, once it is known the stack can run this test and is still alive.

    What a test needs is read from the scenario's `needs` under the test's name (test_accuracy ->
    accuracy), with its load point's own `needs`. A stack that cannot run it gets a "not applicable"
    row and a skip, never a pass.
    """
    kind = request.node.originalname.removeprefix("test_")
    point = getattr(request.node, "callspec", None) and request.node.callspec.params.get("load_point")
    missing = bench.unmet or bench.spec.lacking(bench.scenario.needs_for(kind))
    where = None  # the whole test is out of reach: one row; only a point's own needs: a row for the point
    if not missing and point and point.needs:
        missing, where = bench.spec.lacking(point.needs), point.describe()
    if missing:
        reason = f"{bench.spec.name} {', '.join(missing)}"
        if not any(r.kind == kind and r.status == "not_applicable" and r.load_point == where for r in bench.rows):
            bench.not_applicable(kind, reason, point if where else None)
        pytest.skip(f"not applicable: {reason}")
    dead = bench.stack.death()
    if dead:
        pytest.fail(dead, pytrace=False)
    return bench


@pytest.fixture
def cell_bench(live_bench, benchmark):
    """The bench of a performance cell: its requests are also timed by pytest-benchmark (one round)
    and its row's metrics go to pytest-benchmark's JSON as `extra_info`."""
    live_bench.benchmark = benchmark
    yield live_bench
    live_bench.benchmark = None


@pytest.fixture
def salt(request) -> str | None:
    """This run's workload salt: scenarios put it into every prompt (see --salt; None: unsalted).
    A performance cell's repeat after the first gets its own (`repeat_salt`), so no repeat is
    served from a prompt cache the one before it filled."""
    callspec = getattr(request.node, "callspec", None)
    return repeat_salt(request.config.servebench_salt, callspec.params.get("repeat", 0) if callspec else 0)


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    """A stack that fails or dies under a test fails it in one line, with the stack's reason (its
    rows are already written), never a traceback through the harness."""
    outcome = yield
    error = outcome.excinfo[1] if outcome.excinfo else None
    if isinstance(error, StackError) and "stack_spec" in pyfuncitem.fixturenames:
        outcome.force_exception(pytest.fail.Exception(str(error), pytrace=False))


def pytest_terminal_summary(terminalreporter):
    if _lines:
        terminalreporter.section("servebench")
        for line in _lines:
            terminalreporter.write_line(line)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    # After every fixture's teardown: a stack that a signal left running (cut short between its launch
    # and its fixture, or in its teardown) is stopped here rather than outliving the run.
    ledger.stop_own()


def pytest_sessionfinish(session):
    config = session.config
    # Rows of this run on disk (also when it was interrupted, before the fixtures' teardown).
    wrote = hasattr(config, "servebench_run_id") and (
        Path(config.getoption("results_dir")) / "runs" / config.servebench_run_id).is_dir()
    if wrote and not config.getoption("no_leaderboard"):
        from harness.leaderboard import write_leaderboard

        path = write_leaderboard(Path(config.getoption("results_dir")), config.servebench_scenario_dirs)
        _lines.append(f"leaderboard: {path}")
