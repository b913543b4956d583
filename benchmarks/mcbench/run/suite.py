"""Suites: named grids of runs in TOML, and their execution (in this process, on
joblib processes, or on a Dask cluster).

A suite file holds ``methods`` (a list of selectors, or "all"), ``datasets``, ``seeds``,
the budget (``steps``, ``eval_every``, ``eval_samples``), optional ``exclude`` (method
names left out of "all"), ``checkpoint_every`` (steps; default: at each evaluation),
``[params.<method>]`` hyperparameter overrides, ``[budget.<dataset>]`` budget
overrides and ``replicas`` (most seeds trained together as vectorised replicas; default:
all of a configuration's seeds; 1 trains one seed at a time).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from mcbench.datasets import get_dataset
from mcbench.errors import McbenchError
from mcbench.plugin.protocol import get_protocol
from mcbench.plugin.registry import distinct_methods, methods, parse_selector, resolve
from mcbench.run import store as res
from mcbench.run.runner import RunSpec, default_device, finished, groupable, run_group

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUDGET_KEYS = ("steps", "eval_every", "eval_samples")
SUITE_KEYS = {
    "description",
    "methods",
    "datasets",
    "seeds",
    "exclude",
    "params",
    "budget",
    "checkpoint_every",
    "replicas",
    *BUDGET_KEYS,
}


@dataclass
class Suite:
    name: str
    description: str
    specs: list[RunSpec]
    checkpoint_every: int | None = None  # steps; None: at each evaluation
    replicas: int | None = None  # most seeds trained together; None: all of a run's seeds


def suite_names() -> list[str]:
    files = resources.files("mcbench.run.suites")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def _read(name_or_path: str) -> tuple[str, dict[str, Any]]:
    path = Path(name_or_path)
    if name_or_path.endswith(".toml"):
        if not path.is_file():
            raise McbenchError(f"suite file {name_or_path} does not exist")
        text, name = path.read_text(), path.stem
    elif name_or_path in suite_names():
        text = resources.files("mcbench.run.suites").joinpath(f"{name_or_path}.toml").read_text()
        name = name_or_path
    else:
        raise McbenchError(
            f"unknown suite {name_or_path!r}; choices: {', '.join(suite_names())} "
            "(or a path to a .toml file)"
        )
    try:
        return name, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise McbenchError(f"suite {name_or_path}: malformed TOML: {exc}") from None


def suite_description(name: str) -> str:
    """A suite's description, read without expanding or checking it (for `list`)."""
    _, raw = _read(name)
    return str(raw.get("description", ""))


def _positive_int(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise McbenchError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def load_suite(name_or_path: str, overrides: dict[str, Any] | None = None) -> Suite:
    """Read and validate a suite file (with command-line overrides)."""
    name, raw = _read(name_or_path)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build_suite(name, raw)


def _str_list(where: str, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise McbenchError(f"{where}: {key} must be a non-empty list of names, got {value!r}")
    return value


def _table(where: str, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise McbenchError(f"{where}: [{key}] must hold tables such as [{key}.<name>]")
    return value


def check_dataset(name: str) -> None:
    """The dataset exists, has a protocol, and its data is there, before any work starts:
    ``ds.check()`` where a dataset defines it (a cheap look for its files), else one
    sample drawn on the CPU (which loads a local dataset once in this process)."""
    ds = get_dataset(name)
    get_protocol(ds.family)
    check = getattr(ds, "check", None)
    if callable(check):
        check()
    else:
        ds.sample(1, torch.Generator().manual_seed(0), torch.device("cpu"))


def build_suite(name: str, raw: dict[str, Any]) -> Suite:
    """Expand a suite's grid; every run's method, dataset, budget and hyperparameters are
    checked here, before any work starts."""
    where = f"suite {name}"
    unknown = set(raw) - SUITE_KEYS
    if unknown:
        raise McbenchError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(sorted(SUITE_KEYS))}"
        )
    for key in ("methods", "datasets", "seeds", *BUDGET_KEYS):
        if key not in raw:
            raise McbenchError(f"{where}: missing key {key!r}")
    if not isinstance(raw.get("description", ""), str):
        raise McbenchError(f"{where}: description must be a string")
    registered = methods()
    exclude = raw.get("exclude", [])
    if exclude:
        for m in _str_list(where, "exclude", exclude):
            if m not in registered:
                raise McbenchError(
                    f"{where}: exclude names unknown method {m!r}; "
                    f"choices: {', '.join(sorted(registered))}"
                )
    selected = raw["methods"]
    if selected == "all":
        selected = [m for m in distinct_methods() if m not in exclude]
    if not isinstance(selected, list) or not all(isinstance(m, str) for m in selected):
        raise McbenchError(f'{where}: methods must be a list of names or "all", got {selected!r}')
    if not selected:
        raise McbenchError(f"{where}: no methods selected")
    datasets = _str_list(where, "datasets", raw["datasets"])
    seeds = raw["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise McbenchError(f"{where}: seeds must be a list of non-negative integers, got {seeds!r}")
    params = _table(where, "params", raw.get("params", {}))
    for m in params:
        if m not in registered:
            raise McbenchError(
                f"{where}: [params.{m}] names an unknown method; "
                f"choices: {', '.join(sorted(registered))}"
            )
    budgets = _table(where, "budget", raw.get("budget", {}))
    for d, b in budgets.items():
        if d not in datasets:
            raise McbenchError(
                f"{where}: [budget.{d}] names a dataset not in the suite; "
                f"datasets: {', '.join(datasets)}"
            )
        bad = set(b) - set(BUDGET_KEYS)
        if bad:
            raise McbenchError(
                f"{where}: [budget.{d}] unknown key(s) {', '.join(sorted(bad))}; "
                f"valid: {', '.join(BUDGET_KEYS)}"
            )
    checkpoint_every = raw.get("checkpoint_every")
    if checkpoint_every is not None:
        _positive_int(where, "checkpoint_every", checkpoint_every)
    replicas = raw.get("replicas")
    if replicas is not None:
        _positive_int(where, "replicas", replicas)
    specs = []
    for dataset in datasets:
        check_dataset(dataset)
        budget = {k: raw[k] for k in BUDGET_KEYS} | budgets.get(dataset, {})
        w = f"{where}, dataset {dataset}" if dataset in budgets else where
        for k in BUDGET_KEYS:
            _positive_int(w, k, budget.get(k))
        if budget["eval_every"] > budget["steps"]:
            raise McbenchError(
                f"{w}: eval_every ({budget['eval_every']}) must not exceed "
                f"steps ({budget['steps']})"
            )
        for selector in selected:
            base, _ = parse_selector(selector)
            extra = params.get(base, {})
            resolve(selector, extra)  # validates name and hyperparameters now
            for seed in seeds:
                specs.append(
                    RunSpec(
                        selector,
                        dataset,
                        seed,
                        budget["steps"],
                        budget["eval_every"],
                        budget["eval_samples"],
                        extra,
                    )
                )
    return Suite(name, raw.get("description", ""), specs, checkpoint_every, replicas)


def _device_slot_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"mcbench-gpu-slots-{os.getuid()}"


@contextlib.contextmanager
def device_slot(device: str | None) -> Iterator[torch.device]:
    """The device of one run. An explicit device (``cpu``, ``cuda:1``) is used as given;
    otherwise (None or a bare ``cuda``), with several GPUs, each concurrent run on this
    machine takes a GPU nobody else holds (a flock per GPU, released when the run ends
    or its process dies)."""
    if device and device != "cuda":
        yield torch.device(device)
        return
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n <= 1:
        yield torch.device(device) if device else default_device()
        return
    import fcntl

    folder = _device_slot_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        fd = os.open(folder / f"cuda{i}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        try:
            yield torch.device(f"cuda:{i}")
        finally:
            os.close(fd)
        return
    yield torch.device(f"cuda:{os.getpid() % n}")  # more workers than GPUs: share


def check_device(device: str | None) -> None:
    """A --device this machine can use (not checked for a Dask cluster: its workers may
    have GPUs the submitting machine lacks)."""
    if not device:
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise McbenchError(f"unknown device {device!r}; e.g. cpu, cuda, cuda:1") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise McbenchError(f"--device {device}: no CUDA device on this machine")
        if dev.index is not None and dev.index >= n:
            raise McbenchError(f"--device {device}: this machine has {n} CUDA device(s)")


# Seeding and the torch thread count are per process: runs that share a process (a Dask
# worker started with --nthreads above 1) take turns, or their numbers would depend on
# each other. Start workers with --nthreads 1 and one process per run slot instead.
_ONE_RUN_PER_PROCESS = threading.Lock()


def _worker(
    specs: list[RunSpec],
    results_dir: str,
    device: str | None,
    threads: int,
    opts: dict[str, Any],
    parent: int | None = None,
) -> list[dict[str, Any]]:
    """One unit of work (a run, or runs trained together as replicas) in a worker (this
    process, a joblib process or a Dask worker). Anything that escapes the runs (a full
    disk, a broken plugin) is reported, not raised, so that the other runs go on. A
    joblib worker whose `parent` died (the suite was killed) exits instead of starting."""
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # an orphaned joblib worker: nobody waits for this run any more
    with _ONE_RUN_PER_PROCESS:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with device_slot(device) as dev:
                cfgs = run_group(specs, Path(results_dir), dev, **opts)
            return [{k: cfg.get(k) for k in OUTCOME_KEYS} for cfg in cfgs]
        except Exception as exc:
            return [
                {
                    "run": spec.run_name(),
                    "status": "error",
                    "reason": f"{type(exc).__name__}: {exc}",
                    "skipped": False,
                }
                for spec in specs
            ]
        finally:
            torch.set_num_threads(before)


OUTCOME_KEYS = ("run", "status", "reason", "failed_step", "skipped", "wall_time_s", "replicas")


def group_runs(specs: list[RunSpec], replicas: int | None = None) -> list[list[RunSpec]]:
    """Units of work: runs that differ only in seed, of a method written for replicas,
    train together (at most `replicas` seeds a unit; None: no limit, 1: one run a unit).
    Larger units go first, so that the longest work starts early."""
    units: dict[str, list[list[RunSpec]]] = {}
    cap = replicas or len(specs)
    for spec in specs:
        key = repr(dataclasses.replace(spec, seed=0))
        chunks = units.setdefault(key, [[]])
        if len(chunks[-1]) >= cap or (chunks[-1] and not groupable([chunks[-1][0], spec])):
            chunks.append([])
        chunks[-1].append(spec)
    out = [u for chunks in units.values() for u in chunks]
    return sorted(out, key=lambda u: -u[0].steps * len(u))


def default_jobs(device: str | None, scheduler: str | None = None) -> int:
    """Parallel processes when --jobs is not given: one a CPU core on a CPU (one thread
    each beats threads in one process for these small nets), one on a GPU."""
    if scheduler:
        return 1
    on_gpu = device.startswith("cuda") if device else torch.cuda.is_available()
    if on_gpu:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover (not Linux)
        return max(1, os.cpu_count() or 1)


def plan(
    specs: Iterable[RunSpec], results_dir: Path, retry_failed: bool = False
) -> tuple[list[RunSpec], list[dict[str, Any]]]:
    """Split a suite into runs still to do and finished ones (duplicates dropped)."""
    unique = {s.run_name(): s for s in specs}
    todo, done = [], []
    for name, spec in unique.items():
        cfg = finished(Path(results_dir) / "runs" / name, retry_failed)
        if cfg is None:
            todo.append(spec)
        else:
            done.append({**{k: cfg.get(k) for k in OUTCOME_KEYS}, "skipped": True})
    return todo, done


CONNECT_TIMEOUT = "20s"


def _connect(address: str):
    try:
        from distributed import Client
    except ImportError:
        raise McbenchError(
            "--scheduler needs dask.distributed: pip install 'dask[distributed]'"
        ) from None
    try:
        return Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise McbenchError(f"cannot reach the Dask scheduler at {address}: {exc}") from None


def run_specs(
    specs: Iterable[RunSpec],
    results_dir: Path,
    jobs: int = 1,
    device: str | None = None,
    progress: bool = True,
    *,
    scheduler: str | None = None,
    threads: int = 1,
    checkpoint_every: int | None = None,
    retry_failed: bool = False,
    verbose: bool = False,
    replicas: int | None = 1,
    graphs: bool = False,
) -> list[dict[str, Any]]:
    """Run every spec not finished yet: in this process, on `jobs` joblib processes, or
    on the Dask cluster at `scheduler`; rebuild results.csv as runs land. Seeds of one
    configuration train together as replicas, at most `replicas` a unit (see
    `group_runs`; 1: one run at a time). `graphs`: capture each update as a CUDA graph
    on CUDA devices (mcbench.run.graphs).

    Returns one outcome per run (finished earlier ones marked ``skipped``). A run that
    fails is recorded and the others go on; only this process writes results.csv.
    """
    from tqdm import tqdm

    if not scheduler:
        check_device(device)
    results_dir = Path(results_dir).resolve()  # workers may start elsewhere
    client = _connect(scheduler) if scheduler else None  # fail before any work
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if client is not None:
            client.close()
        raise McbenchError(f"cannot create the results folder {results_dir}: {exc}") from None
    todo, outcomes = plan(specs, results_dir, retry_failed)
    units = group_runs(todo, replicas)
    opts = {
        "checkpoint_every": checkpoint_every,
        "retry_failed": retry_failed,
        "verbose": verbose,
        "graphs": graphs,
    }
    args = (str(results_dir), device, threads, opts)
    if client is not None:
        width = max(1, sum(client.nthreads().values()))
    else:
        width = max(1, min(jobs, len(units)))
    bar = tqdm(total=len(todo), disable=not progress, unit="run", desc="mcbench")
    bar.set_postfix(ok=0, failed=0, running=width, earlier=len(outcomes))
    landed: list[dict[str, Any]] = []

    def land(out: dict[str, Any]) -> None:
        landed.append(out)
        res.write_table(results_dir)
        n = {s: sum(d["status"] == s for d in landed) for s in ("ok", "failed", "error")}
        bar.set_postfix(
            ok=n["ok"],
            failed=n["failed"] + n["error"],
            running=min(width, len(todo) - len(landed)),
            earlier=len(outcomes),
            last=f"{out['run'][:32]}:{out['status']}",
        )
        bar.update(1)

    try:
        if client is not None:
            from distributed import as_completed

            futures = {
                client.submit(_worker, u, *args, key=f"mcbench-{u[0].run_name()}-{len(u)}"): u
                for u in units
            }
            for fut in as_completed(futures):
                try:
                    outs = fut.result()
                except Exception as exc:  # its worker died again and again (out of memory)
                    outs = [
                        {"run": s.run_name(), "status": "error", "reason": repr(exc)}
                        for s in futures[fut]
                    ]
                for out in outs:
                    land(out)
        elif width <= 1:
            for unit in units:
                for out in _worker(unit, *args):
                    land(out)
        else:
            from joblib import Parallel, delayed

            pool = Parallel(n_jobs=width, return_as="generator_unordered")
            me = os.getpid()
            for outs in pool(delayed(_worker)(u, *args, parent=me) for u in units):
                for out in outs:
                    land(out)
    finally:
        bar.close()
        if client is not None:
            client.close()
        res.write_table(results_dir)
    return outcomes + landed
