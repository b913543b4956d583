"""Suites: named grids of runs in TOML, and their execution (in this process, on
joblib processes, or on a Dask cluster).

A suite file holds ``methods`` (a list of selectors, or "all"), ``datasets``, ``seeds``,
the budget (``steps``, ``eval_every``, ``eval_samples``), optional ``exclude`` (method
names left out of "all"), ``checkpoint_every`` (steps; default: at each evaluation),
``[params.<method>]`` hyperparameter overrides, ``[budget.<dataset>]`` budget
overrides and ``replicas`` (most seeds trained together as vectorised replicas; default:
all of a configuration's seeds; 1 trains one seed at a time) and ``protocol`` (the
profile every run trains under: "common", the default, or a paper's, e.g. "pacgan").
A ``[regularizers]`` table applies the harness's training options to every run
(`mcbench.plugin.regularizers`: ``instance_noise``, ``noise_schedule``,
``noise_steps``, ``lr_d``, ``lr_g``); ``tensorboard = true`` writes each run's curves
for TensorBoard (`mcbench.run.tensorboard`); ``compile = true`` runs every update as the
method's functional update compiled whole (`mcbench.run.compiled`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from mcbench.datasets import get_dataset
from mcbench.errors import McbenchError, did_you_mean
from mcbench.plugin.protocol import check_profile, get_protocol
from mcbench.plugin.registry import distinct_methods, methods, parse_selector, resolve
from mcbench.plugin.regularizers import Regularizers
from mcbench.run import store as res
from mcbench.run.progress import log
from mcbench.run.runner import (
    RunSpec,
    check_compiled,
    check_regularizers,
    default_device,
    finished,
    groupable,
    run_group,
    why_redone,
)
from mcbench.run.tensorboard import check_available as check_tensorboard

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
    "protocol",
    "regularizers",
    "tensorboard",
    "compile",
    *BUDGET_KEYS,
}


@dataclass
class Suite:
    name: str
    description: str
    specs: list[RunSpec]
    checkpoint_every: int | None = None  # steps; None: at each evaluation
    replicas: int | None = None  # most seeds trained together; None: all of a run's seeds
    tensorboard: bool = False  # write each run's curves for TensorBoard


def suite_names() -> list[str]:
    files = resources.files("mcbench.run.suites")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def _read(name_or_path: str) -> tuple[str, dict[str, Any]]:
    path = Path(name_or_path)
    if name_or_path.endswith(".toml"):
        if path.is_dir():
            raise McbenchError(f"suite file {name_or_path} is a folder: expected a TOML file")
        if not path.is_file():
            raise McbenchError(f"suite file {name_or_path} does not exist")
        try:  # TOML is UTF-8 by definition: anything else is not a suite file
            text, name = path.read_bytes().decode("utf-8"), path.stem
        except UnicodeDecodeError as exc:
            raise McbenchError(
                f"suite file {name_or_path} is not UTF-8 text (byte {exc.start}): "
                "expected a TOML suite file"
            ) from None
    elif name_or_path in suite_names():
        text = resources.files("mcbench.run.suites").joinpath(f"{name_or_path}.toml").read_text()
        name = name_or_path
    else:
        raise McbenchError(
            f"unknown suite {name_or_path!r}{did_you_mean(name_or_path, suite_names())}; "
            f"choices: {', '.join(suite_names())} "
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
    """Read and validate a suite file (with command-line overrides; a "regularizers"
    override is merged into the suite's table, option by option)."""
    name, raw = _read(name_or_path)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    given = overrides.pop("regularizers", None)
    raw.update(overrides)
    if given:
        table = raw.get("regularizers", {})
        raw["regularizers"] = {**table, **given} if isinstance(table, dict) else table
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
                    f"{where}: exclude names unknown method {m!r}{did_you_mean(m, registered)}; "
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
                f"{where}: [params.{m}] names an unknown method{did_you_mean(m, registered)}; "
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
    protocol = raw.get("protocol", "common")
    if not isinstance(protocol, str):
        raise McbenchError(f"{where}: protocol must be a profile name, got {protocol!r}")
    check_profile(protocol)
    regularizers = Regularizers.from_options(
        raw.get("regularizers", {}), f"{where}: [regularizers]"
    )
    tensorboard = raw.get("tensorboard", False)
    if not isinstance(tensorboard, bool):
        raise McbenchError(f"{where}: tensorboard must be true or false, got {tensorboard!r}")
    compiled = raw.get("compile", False)
    if not isinstance(compiled, bool):
        raise McbenchError(f"{where}: compile must be true or false, got {compiled!r}")
    specs = []
    for dataset in datasets:
        check_dataset(dataset)
        proto = get_protocol(get_dataset(dataset).family, protocol, dataset)
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
            entry, cfg = resolve(selector, extra)  # validates name and hyperparameters now
            entry.cls.check_protocol(cfg, proto)
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
                        protocol,
                        regularizers,
                        compiled,
                    )
                )
            check_regularizers(specs[-1])  # e.g. instance noise needs a critic
            check_compiled(specs[-1])  # e.g. a method without a functional update
    return Suite(name, raw.get("description", ""), specs, checkpoint_every, replicas, tensorboard)


def _device_slot_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"mcbench-gpu-slots-{os.getuid()}"


@contextlib.contextmanager
def device_slot(device: str | None) -> Iterator[torch.device]:
    """The device of one run. An explicit device (``cpu``, ``cuda:1``) is used as given;
    otherwise (None or a bare ``cuda``), with several GPUs, each concurrent run on this
    machine takes a GPU nobody else holds (a file lock per GPU, released when the run ends
    or its process dies)."""
    if device and device != "cuda":
        yield torch.device(device)
        return
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n <= 1:
        yield torch.device(device) if device else default_device()
        return
    folder = _device_slot_dir()
    for i in range(n):
        with res.try_lock(folder / f"cuda{i}.lock") as mine:
            if mine:
                yield torch.device(f"cuda:{i}")
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
    joblib worker whose `parent` died (the suite was killed) exits at once, even mid-run:
    its checkpoint and lock are the next command's (see `_watch_parent`)."""
    if parent is not None:
        _watch_parent(parent)
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
                    "traceback": traceback.format_exc(),
                    "skipped": False,
                }
                for spec in specs
            ]
        finally:
            torch.set_num_threads(before)


PARENT_POLL_S = 0.2
_watched: set[int] = set()


def _watch_parent(parent: int) -> None:
    """End this worker process when `parent` (the `mcbench run` that started it) is gone,
    however it died (SIGKILL included): a daemon thread polls os.getppid(), which changes
    when the parent dies (the worker is re-parented). Otherwise a killed command's
    workers would train on unseen, holding the runs' locks, while a re-run reports those
    runs as someone else's or, once published, as finished earlier."""
    if os.getppid() != parent:
        os._exit(1)  # orphaned before we started: nobody waits for this run any more
    if parent in _watched:
        return
    _watched.add(parent)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="mcbench-parent-watch", daemon=True).start()


OUTCOME_KEYS = (
    "run",
    "status",
    "reason",
    "failed_step",
    "skipped",
    "wall_time_s",
    "replicas",
    "traceback",
)


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
    specs: Iterable[RunSpec],
    results_dir: Path,
    retry_failed: bool = False,
    replicas: int | None = 1,
) -> tuple[list[list[RunSpec]], list[RunSpec], list[dict[str, Any]]]:
    """Split a suite (duplicates dropped) into units of work, the runs they must publish,
    and finished runs. A unit (see `group_runs`) is kept whole when any of its runs needs
    work: its finished members are retrained with it (their numbers are the group's) but
    not published again."""
    unique = list({s.run_name(): s for s in specs}.values())
    units, todo, done = [], [], []
    for unit in group_runs(unique, replicas):
        cfgs = [finished(Path(results_dir) / "runs" / s.run_name(), retry_failed) for s in unit]
        for spec, cfg in zip(unit, cfgs, strict=True):
            why = why_redone(Path(results_dir) / "runs" / spec.run_name()) if cfg is None else None
            if why:
                log(f"{spec.run_name()} is trained again: {why}")
        if any(cfg is None for cfg in cfgs):
            units.append(unit)
            todo += [s for s, cfg in zip(unit, cfgs, strict=True) if cfg is None]
        else:
            done += [{**_outcome(cfg), "skipped": True} for cfg in cfgs if cfg is not None]
    return units, todo, done


def _outcome(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: cfg.get(k) for k in OUTCOME_KEYS}


def check_writable(results_dir: Path) -> None:
    """Fail before any work when the results folder, its runs/ folder or results.csv
    cannot be written (a read-only place, a results.csv that is a folder): one line,
    exit 2, rather than a traceback after hours of training. Rebuilds results.csv from
    the run folders, so that it never lacks a finished run (e.g. after a kill)."""
    for folder in (results_dir, results_dir / "runs"):
        probe = folder / f".mcbench-probe.{os.getpid()}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise McbenchError(f"cannot write in {folder}: {exc.strerror or exc}") from None
    table = results_dir / "results.csv"
    if table.exists() and not table.is_file():
        raise McbenchError(f"{table} exists and is not a file")
    try:
        res.write_table(results_dir)
    except OSError as exc:
        raise McbenchError(f"cannot write {table}: {exc.strerror or exc}") from None


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
    tensorboard: bool = False,
) -> list[dict[str, Any]]:
    """Run every spec not finished yet: in this process, on `jobs` joblib processes, or
    on the Dask cluster at `scheduler`; rebuild results.csv as runs land. Seeds of one
    configuration train together as replicas, at most `replicas` a unit (see
    `group_runs`; 1: one run at a time). `graphs`: capture each update as a CUDA graph
    on CUDA devices (mcbench.run.graphs). `tensorboard`: write each run's curves for
    TensorBoard into its folder's tb/ (mcbench.run.tensorboard).

    Returns one outcome per run (finished earlier ones marked ``skipped``). A run that
    fails is recorded and the others go on; only this process writes results.csv.
    """
    from tqdm import tqdm

    if not scheduler:
        check_device(device)
    if tensorboard:
        check_tensorboard()
    results_dir = Path(results_dir).resolve()  # workers may start elsewhere
    client = _connect(scheduler) if scheduler else None  # fail before any work
    try:
        check_writable(results_dir)
    except McbenchError:
        if client is not None:
            client.close()
        raise
    units, todo, outcomes = plan(specs, results_dir, retry_failed, replicas)
    opts = {
        "checkpoint_every": checkpoint_every,
        "retry_failed": retry_failed,
        "verbose": verbose,
        "graphs": graphs,
        "tensorboard": tensorboard,
    }
    args = (str(results_dir), device, threads, opts)
    if client is not None:
        width = max(1, sum(client.nthreads().values()))
    else:
        width = max(1, min(jobs, len(units)))
    bar = tqdm(total=len(todo), disable=not progress, unit="run", desc="mcbench")
    bar.set_postfix(ok=0, failed=0, running=width, earlier=len(outcomes))
    landed: list[dict[str, Any]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def advance() -> None:
        """The bar at landed runs plus each running run's share of its steps (read from
        progress.json): it moves per seed, within a replica group too."""
        with lock:
            gone = {o["run"] for o in landed}
            share = 0.0
            for spec in todo:
                if spec.run_name() in gone:
                    continue
                path = res.partial_dir(results_dir / "runs" / spec.run_name()) / res.PROGRESS
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    share += min(1.0, json.loads(path.read_text())["step"] / spec.steps)
            bar.n = round(len(landed) + share, 2)
            bar.refresh()

    def poll() -> None:
        while not stop.wait(1.0):
            advance()

    def land(out: dict[str, Any]) -> None:
        if out.get("skipped"):  # a finished member of a group trained for another
            outcomes.append(out)
            return
        with lock:
            landed.append(out)
        with contextlib.suppress(OSError):  # an unwritable table is reported at the end
            res.write_table(results_dir)
        n = {s: sum(d["status"] == s for d in landed) for s in ("ok", "failed", "error")}
        bar.set_postfix(
            ok=n["ok"],
            failed=n["failed"] + n["error"],
            running=min(width, len(todo) - len(landed)),
            earlier=len(outcomes),
            last=f"{out['run'][:32]}:{out['status']}",
        )
        advance()

    watcher = threading.Thread(target=poll, name="mcbench-progress", daemon=True)
    if progress and sys.stderr.isatty():  # a log file gets the bar when a run lands, not
        watcher.start()  # a line every second
    clean = False
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
        clean = True
    finally:
        stop.set()
        bar.close()
        if client is not None:
            client.close()
        try:
            res.write_table(results_dir)
        except OSError as exc:
            if clean:  # the runs are published; only the table is missing
                raise McbenchError(
                    f"runs are saved under {results_dir / 'runs'}, but "
                    f"{results_dir / 'results.csv'} could not be written: "
                    f"{exc.strerror or exc}"
                ) from None
    return outcomes + landed
