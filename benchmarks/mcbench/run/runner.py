"""The runner: trains one (method, dataset, seed, hyperparameters, budget) run.

It owns everything that is not the method: device, seeds, the real-data stream, the
evaluation schedule, timing (evaluation excluded), NaN detection and the run's files.
`train_group` is the training loop, for one seed or R seeds trained together as
replicas alike; its parts live beside it in mcbench.run: graphs.Stepper (the timed
update, eager or CUDA graph), divergence.DivergenceWatch (NaN/inf), evaluation.Evaluator,
checkpoint.Checkpointer, ledger.Ledger (per-replica rows and failures) and
progress.Reporter (progress.json, log lines).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import io
import json
import os
import platform
import random
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import mcbench
from mcbench.datasets import get_dataset
from mcbench.errors import McbenchError
from mcbench.plugin import regularizers as regs
from mcbench.plugin.protocol import get_protocol, make_problem
from mcbench.plugin.registry import resolve
from mcbench.plugin.regularizers import Regularizers
from mcbench.plugin.replicas import replica_state
from mcbench.run import store as res
from mcbench.run.checkpoint import Checkpointer
from mcbench.run.compiled import check_compilable
from mcbench.run.divergence import DivergenceWatch
from mcbench.run.evaluation import EVAL_CHUNK, Evaluator, generate
from mcbench.run.graphs import GRAPH_WARMUP, Stepper
from mcbench.run.ledger import Ledger, Progress
from mcbench.run.progress import Reporter, log, report_progress
from mcbench.run.seeds import derive_seed, generator
from mcbench.run.steady import keep_freed_memory
from mcbench.run.tensorboard import TB_DIR, LiveView

__all__ = [
    "EVAL_CHUNK",
    "GRAPH_WARMUP",
    "RunSpec",
    "build",
    "build_group",
    "check_compiled",
    "check_regularizers",
    "code_identity",
    "cpu_model",
    "default_device",
    "derive_seed",
    "environment",
    "finished",
    "generate",
    "group_key",
    "groupable",
    "load_method",
    "report_progress",
    "run",
    "run_group",
    "spec_of",
    "stale",
    "train",
    "train_group",
    "why_redone",
]


@dataclass(frozen=True)
class RunSpec:
    """One run. `method` is a selector (``pacgan[m=3]``); `params` more overrides;
    `protocol` the profile it trains under (`mcbench.plugin.protocol.PROFILES`);
    `regularizers` the harness's training options (instance noise, TTUR rates;
    `mcbench.plugin.regularizers`), none by default. `compiled`: the update runs as the
    method's functional update compiled by torch.compile (mcbench.run.compiled), equal
    to the eager update to rounding only, so it is part of the configuration."""

    method: str
    dataset: str
    seed: int
    steps: int
    eval_every: int
    eval_samples: int
    params: dict[str, Any] = field(default_factory=dict)
    protocol: str = "common"
    regularizers: Regularizers = field(default_factory=Regularizers)
    compiled: bool = False

    def resolved(self) -> dict[str, Any]:
        """The full configuration that determines the numbers (hashed for the key).
        "regularizers" appears only where one is set, and "compiled" only for a
        compiled run, so other runs keep the keys they had before either existed."""
        entry, cfg = resolve(self.method, self.params)
        ds = get_dataset(self.dataset)
        proto = get_protocol(ds.family, self.protocol, self.dataset)
        out = {
            "method": self.method,
            "method_class": entry.cls.name,
            "hyperparameters": dataclasses.asdict(cfg) if cfg is not None else {},
            "dataset": self.dataset,
            "seed": self.seed,
            "budget": {
                "steps": self.steps,
                "eval_every": self.eval_every,
                "eval_samples": self.eval_samples,
            },
            "protocol": proto.as_dict(),
        }
        record = self.regularizers.record(self.steps, proto.lr_d, proto.lr_g)
        if record:
            out["regularizers"] = record
        if self.compiled:
            out["compiled"] = True
        return out

    def key(self) -> str:
        """Hash of `resolved`, the protocol as `Protocol.key_dict` (common-protocol runs
        keep their keys from before profiles; other profiles make other keys)."""
        config = self.resolved()
        ds = get_dataset(self.dataset)
        config["protocol"] = get_protocol(ds.family, self.protocol, self.dataset).key_dict()
        blob = json.dumps(config, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def run_name(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.method)
        return f"{safe}-{self.dataset}-s{self.seed}-{self.key()}"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _setup(spec: RunSpec) -> tuple[Any, Any, Any, Any]:
    """A run's method entry, config, dataset and protocol; seeds the global numpy and
    Python streams for code that uses them."""
    entry, cfg = resolve(spec.method, spec.params)
    ds = get_dataset(spec.dataset)
    np.random.seed(derive_seed(spec.seed, "numpy") % 2**32)
    random.seed(derive_seed(spec.seed, "python"))
    return entry, cfg, ds, get_protocol(ds.family, spec.protocol, spec.dataset)


def _pack(cfg: Any) -> int:
    """The method's pack size (PacGAN's m), for profiles that count a batch in packs."""
    return int(getattr(cfg, "m", 1))


def _noise_rng(spec: RunSpec, device: torch.device) -> torch.Generator | None:
    """The seed's instance-noise stream (its own purpose: nothing else shifts)."""
    if not spec.regularizers.noisy:
        return None
    return generator(device, derive_seed(spec.seed, "instance-noise"))


def _construct(entry: Any, cfg: Any, problem: Any, spec: RunSpec, noise_rng: Any) -> Any:
    """The method built on `problem` with the run's regularizers applied (`noise_rng`:
    the instance-noise stream, one per replica)."""
    problem = regs.apply(problem, spec.regularizers, spec.steps, noise_rng)
    method = entry.cls(problem, cfg)
    regs.check_applied(problem, spec.method)
    return method


def build(
    spec: RunSpec, device: torch.device, capturable: bool = False
) -> tuple[Any, Any, torch.Generator]:
    """The method of a run, seeded and on `device`, with its real-data stream."""
    entry, cfg, ds, proto = _setup(spec)
    torch.manual_seed(derive_seed(spec.seed, "init"))
    data_rng = generator(device, derive_seed(spec.seed, "data"))
    method_rng = generator(device, derive_seed(spec.seed, "method"))
    problem = make_problem(
        ds, proto, device, method_rng, data_rng, capturable=capturable, pack=_pack(cfg)
    )
    return _construct(entry, cfg, problem, spec, _noise_rng(spec, device)), ds, data_rng


def groupable(specs: list[RunSpec]) -> bool:
    """Specs that may train as replicas: one method, dataset, budget and hyperparameters,
    distinct seeds, and a method whose `step` is written for replicas."""
    if len(specs) < 2:
        return False
    first = specs[0]
    same = all(dataclasses.replace(s, seed=first.seed) == first for s in specs) and len(
        {s.seed for s in specs}
    ) == len(specs)
    return same and resolve(first.method, first.params)[0].cls.vectorized


def build_group(
    specs: list[RunSpec], device: torch.device, capturable: bool = False
) -> tuple[Any, Any, list]:
    """One replica method for specs that differ only in seed (see `groupable`): replica
    r starts from exactly the weights and streams of the sequential run of specs[r]."""
    entry, cfg, ds, proto = _setup(specs[0])
    init_states = []
    for spec in specs:
        torch.manual_seed(derive_seed(spec.seed, "init"))
        init_states.append(torch.get_rng_state())
    data_rngs = [generator(device, derive_seed(s.seed, "data")) for s in specs]
    method_rngs = [generator(device, derive_seed(s.seed, "method")) for s in specs]
    problem = make_problem(
        ds, proto, device, method_rngs, data_rngs, init_states, capturable, _pack(cfg)
    )
    noise = [_noise_rng(s, device) for s in specs] if specs[0].regularizers.noisy else None
    return _construct(entry, cfg, problem, specs[0], noise), ds, data_rngs


def group_key(specs: list[RunSpec]) -> str:
    blob = "+".join(s.key() for s in specs)
    return specs[0].key() if len(specs) == 1 else hashlib.sha256(blob.encode()).hexdigest()[:10]


def spec_of(config: dict[str, Any]) -> RunSpec:
    """The RunSpec recorded in a run's config.json."""
    b = config["budget"]
    return RunSpec(
        config["method"],
        config["dataset"],
        config["seed"],
        b["steps"],
        b["eval_every"],
        b["eval_samples"],
        config.get("params", {}),
        config.get("protocol", {}).get("name", "common"),
        Regularizers.from_options(config.get("regularizers") or {}, "config.json regularizers"),
        bool(config.get("compiled", False)),
    )


@contextlib.contextmanager
def _global_streams_kept():
    """Torch's, numpy's and Python's global streams as they were, whatever the block
    seeds (building a method seeds them, as the runner does)."""
    states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def check_regularizers(spec: RunSpec) -> None:
    """Refuse, before any work, a run whose regularizers its method cannot take:
    instance noise on a method that builds no critic through `problem.critic()` (it
    would do nothing). Builds the method once on the CPU; the caller's global streams
    are left as they were."""
    if not spec.regularizers.noisy:
        return
    with _global_streams_kept():
        build(spec, torch.device("cpu"))


def check_compiled(spec: RunSpec) -> None:
    """Refuse, before any work, a compiled run its method cannot take: a method without
    a functional update, instance noise (drawn inside the critic, which the functional
    update does not see), or options its functional update refuses (building the method
    once on the CPU; the caller's global streams are left as they were)."""
    if not spec.compiled:
        return
    entry, _ = resolve(spec.method, spec.params)
    check_compilable(entry.cls, spec.method)
    if spec.regularizers.noisy:
        raise McbenchError(f"method {spec.method!r}: --compile does not take instance noise")
    with _global_streams_kept():
        build(spec, torch.device("cpu"))[0].functional_update()


def load_method(run_dir: Path, device: torch.device | None = None) -> Any:
    """Rebuild a finished run's method with its final generator loaded (for reports)."""
    config = res.read_config(Path(run_dir))
    device = device or torch.device("cpu")
    method, _, _ = build(spec_of(config), device)
    state = torch.load(Path(run_dir) / "generator.pt", map_location=device)
    method.generator_module().load_state_dict(state)
    return method


def train(
    spec: RunSpec,
    device: torch.device | None = None,
    *,
    checkpoint: Path | None = None,
    checkpoint_every: int | None = None,
    progress: Path | None = None,
    verbose: bool = False,
) -> tuple[list[dict], Any, dict]:
    """Train one run; returns (metric rows, method, status info).

    With `checkpoint`, training resumes from that file when it holds a valid checkpoint
    of this configuration and writes one every `checkpoint_every` steps (default: at
    each evaluation), so a killed run continues where it was and ends with the same
    numbers. `progress` gets a small JSON of the latest step and metrics.
    """
    out, method = train_group(
        [spec],
        device,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        progress=None if progress is None else [progress],
        verbose=verbose,
    )
    rows, status = out[0]
    return rows, method, status


def train_group(
    specs: list[RunSpec],
    device: torch.device | None = None,
    *,
    checkpoint: Path | None = None,
    checkpoint_every: int | None = None,
    progress: list[Path | None] | None = None,
    verbose: bool = False,
    graphs: bool = False,
    tensorboard: list[Path | None] | None = None,
) -> tuple[list[tuple[list[dict], dict]], Any]:
    """Train runs that differ only in seed as vectorised replicas (one run: the plain
    method, a group of one); returns ((rows, status) per spec, method).

    Each replica is recorded as its own run: its losses, evaluations, divergence and
    failure are its own (a replica that diverges is marked failed at its step while the
    others go on). `step_time_ms` is the group's time per update divided by the number
    of replicas: the cost of one seed's update. With `graphs` on a CUDA device, after
    GRAPH_WARMUP eager updates the update is captured as a CUDA graph and replayed
    (mcbench.run.graphs); where capture is impossible or fails, training goes on eagerly.
    `tensorboard[r]` (None: none) is the folder where run r's recorded values are
    written as TensorBoard scalars (mcbench.run.tensorboard), flushed at each evaluation.
    """
    device = device or default_device()
    keep_freed_memory()  # steady update times on a CPU (mcbench.run.steady); numbers unchanged
    spec = specs[0]
    # instance noise draws from streams a CUDA graph capture does not register yet
    noisy = spec.regularizers.noisy
    capture = graphs and device.type == "cuda" and not noisy
    saver = Checkpointer(checkpoint, group_key(specs), checkpoint_every or spec.eval_every, device)
    method, ds, data_rng, prog = _build_or_resume(specs, device, capture, saver, verbose)
    view = LiveView(tensorboard, prog.step) if tensorboard is not None else None
    ledger = Ledger(specs, prog, on_record=None if view is None else view.record)
    watch = DivergenceWatch(len(specs), device)
    evaluate = Evaluator(method, ds, spec.eval_samples, device)
    update = Stepper(method, device, capture, name=spec.run_name(), compiled=spec.compiled)
    if graphs and noisy and device.type == "cuda":
        update.execution = "eager (instance noise is not captured as a CUDA graph)"
    report = Reporter(specs, progress, verbose, checkpoint)
    step = prog.step
    try:
        for step in range(prog.step + 1, spec.steps + 1):
            if not ledger.alive:
                break
            method.problem.begin_update(step)  # per generator update (instance noise)
            losses, seconds = update(method.problem.sample_real(method.problem.batch_size))
            prog.timed(seconds)
            watch.observe(step, losses)  # on the device: no host sync per step
            evaluating = step % spec.eval_every == 0 or step == spec.steps
            saving = saver.due(step, spec.steps)
            if not (evaluating or saving):
                continue
            for r, bad in watch.first_bad().items():
                ledger.fail(r, bad, f"a loss is NaN or inf at step {bad}")
            if evaluating and ledger.alive:
                evaluate(step, losses, ledger)
                if view is not None:  # before the checkpoint: what it holds is written
                    view.flush()
            if saving and ledger.alive:
                saver.save(step, method, data_rng, prog)
            report(step, ledger, evaluated=evaluating)
    except McbenchError:
        raise
    except Exception as exc:  # a method bug must not take the suite down with it
        for r in list(ledger.alive):
            ledger.fail(r, step, f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    finally:
        if view is not None:
            view.close()
    return ledger.outcomes(update.execution), method


def _build_or_resume(
    specs: list[RunSpec],
    device: torch.device,
    capturable: bool,
    saver: Checkpointer,
    verbose: bool,
) -> tuple[Any, Any, Any, Progress]:
    """The group's method, dataset, data stream(s) and progress: fresh, or resumed from
    the checkpoint when it holds a valid one of this configuration. This is where one
    seed and R seeds differ (a plain method, or replicas); the loop treats both alike."""
    if len(specs) > 1 and not groupable(specs):
        raise ValueError("these runs cannot train as replicas of one another")

    def make() -> tuple[Any, Any, Any]:
        if len(specs) > 1:
            return build_group(specs, device, capturable=capturable)
        return build(specs[0], device, capturable=capturable)

    name = specs[0].run_name()
    method, ds, data_rng = make()
    try:
        prog = saver.restore(method, data_rng)
    except Exception as exc:  # damaged or foreign: start over, never half-load
        log(f"{name}: ignoring checkpoint ({type(exc).__name__}: {exc})")
        (method, ds, data_rng), prog = make(), None
    if prog is None:
        return method, ds, data_rng, Progress()
    prog.resumed_from.append(prog.step)
    if verbose:
        log(f"{name} resumes at step {prog.step}")
    return method, ds, data_rng, prog


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, where platform.processor()
    is empty), else whatever the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "mcbench": mcbench.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": platform.node(),
        "pid": os.getpid(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


@functools.cache
def _source_hash(cls: type) -> str:
    """sha256 of the source files that define `cls`: the modules of its class hierarchy
    and the modules its own module imports, kept where they belong to mcbench or to the
    package that defines the class (not torch, numpy or the standard library; decided
    by package name, so an installed copy in site-packages counts as much as a
    checkout). Hashed by content, so that moving the checkout keeps it and editing any
    of them changes it. Cached per class: the code a process runs is the code it
    imported."""
    own = {k.__module__.split(".")[0] for k in cls.__mro__} - {"builtins"}
    names = {k.__module__ for k in cls.__mro__}
    module = sys.modules.get(cls.__module__)
    for obj in vars(module).values() if module else ():
        names.add(obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", ""))
    files = {
        getattr(sys.modules.get(n), "__file__", None) or ""
        for n in names
        if isinstance(n, str) and n.split(".")[0] in own
    }
    digests = sorted(
        res.sha256_file(Path(f)) for f in files if f.endswith(".py") and Path(f).is_file()
    )
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def code_identity(
    method: str, params: dict[str, Any] | None = None, regularized: bool = False
) -> dict[str, str]:
    """What code produced a run (recorded in config.json["code"]): the harness version
    and a hash of the method's source files, and with `regularized` (a run with
    regularizers) of the regularizers' source. A finished run whose code differs from
    the current code is stale and trained again (see `stale`)."""
    entry, _ = resolve(method, params or {})
    out = {"mcbench": mcbench.__version__, "method_source": _source_hash(entry.cls)}
    if regularized:
        out["regularizers_source"] = res.sha256_file(Path(regs.__file__))
    return out


def stale(cfg: dict[str, Any]) -> str | None:
    """Why a finished run's results are not those of the current code, or None. Runs
    that predate the record (the committed reference runs) are "code unknown": kept."""
    recorded = cfg.get("code")
    if not isinstance(recorded, dict):
        return None
    try:
        now = code_identity(cfg["method"], cfg.get("params", {}), bool(cfg.get("regularizers")))
    except (McbenchError, KeyError):
        return None  # a method that no longer exists: nothing newer to train it with
    if recorded.get("method_source") != now["method_source"]:
        return "the method's source code changed since this run"
    was = recorded.get("regularizers_source")
    if was is not None and was != now.get("regularizers_source"):
        return "the regularizers' source code changed since this run"
    if recorded.get("mcbench") != now["mcbench"]:
        return f"mcbench changed ({recorded.get('mcbench')} -> {now['mcbench']})"
    return None


def finished(final: Path, retry_failed: bool = False) -> dict[str, Any] | None:
    """The config of a published run that needs no work: complete, its config and files
    intact, produced by the current code, and ok (or failed, unless `retry_failed`)."""
    cfg = res.verify_run(final)
    if cfg is None or stale(cfg) is not None:
        return None
    if cfg.get("status") == "ok" or (cfg.get("status") == "failed" and not retry_failed):
        return cfg
    return None


def why_redone(final: Path) -> str | None:
    """Why a published run folder is trained again (damaged, edited or stale), naming
    the file at fault; None when there is no folder or nothing is wrong with it."""
    if not final.exists():
        return None
    cfg, why = res.check_run(final)
    return why if cfg is None else stale(cfg)


def run(
    spec: RunSpec,
    results_dir: Path,
    device: torch.device | None = None,
    force: bool = False,
    *,
    checkpoint_every: int | None = None,
    retry_failed: bool = False,
    verbose: bool = False,
    graphs: bool = False,
    tensorboard: bool = False,
) -> dict[str, Any]:
    """Train `spec` unless its folder already holds a finished run; publish atomically.

    The run trains in RESULTS_DIR/runs/.<run>.partial (its checkpoint and progress live
    there), under a lock so that no two processes train it at once; the finished folder
    appears in one rename and the checkpoint goes with the staging folder. With
    `tensorboard`, its curves are written as TensorBoard scalars into the folder's tb/.
    """
    return run_group(
        [spec],
        results_dir,
        device,
        force,
        checkpoint_every=checkpoint_every,
        retry_failed=retry_failed,
        verbose=verbose,
        graphs=graphs,
        tensorboard=tensorboard,
    )[0]


def run_group(
    specs: list[RunSpec],
    results_dir: Path,
    device: torch.device | None = None,
    force: bool = False,
    *,
    checkpoint_every: int | None = None,
    retry_failed: bool = False,
    verbose: bool = False,
    graphs: bool = False,
    tensorboard: bool = False,
) -> list[dict[str, Any]]:
    """`run` for runs that differ only in seed, trained together as replicas: each run
    is locked, staged and published on its own, exactly like a sequential run.

    A group is trained whole whenever any of its runs needs work (one missing after a
    kill between two publishes, one damaged or stale): a seed's numbers are those of its
    group, so only retraining the group reproduces them. Only the runs that need it are
    published; the group's checkpoint lives in the staging folder of the first of them
    and is published last, so a kill at any moment resumes the whole group from it."""
    device = device or default_device()
    finals = [Path(results_dir) / "runs" / s.run_name() for s in specs]

    def done() -> list[dict[str, Any] | None]:
        return [None if force else finished(f, retry_failed) for f in finals]

    earlier = done()
    if all(cfg is not None for cfg in earlier):
        return [{**cfg, "skipped": True} for cfg in earlier if cfg is not None]
    with contextlib.ExitStack() as stack:
        # every member's lock: a finished member's lock is held by whoever repairs it
        mine = [stack.enter_context(res.run_lock(res.lock_path(f))) for f in finals]
        if not all(mine):
            return [
                {**cfg, "skipped": True}
                if cfg is not None
                else {
                    "run": spec.run_name(),
                    "status": "busy",
                    "skipped": False,
                    "reason": "another process is training this run (or its group)",
                }
                for spec, cfg in zip(specs, earlier, strict=True)
            ]
        earlier = done()  # published while we looked
        todo = [i for i, cfg in enumerate(earlier) if cfg is None]
        if not todo:
            return [{**cfg, "skipped": True} for cfg in earlier if cfg is not None]
        published = _train_and_publish(
            specs, finals, todo, device, checkpoint_every, verbose, graphs, tensorboard
        )
    return [
        published[i] if i in published else {**(earlier[i] or {}), "skipped": True}
        for i in range(len(specs))
    ]


def _train_and_publish(
    specs: list[RunSpec],
    finals: list[Path],
    todo: list[int],
    device: torch.device,
    checkpoint_every: int | None,
    verbose: bool,
    graphs: bool = False,
    tensorboard: bool = False,
) -> dict[int, dict[str, Any]]:
    """Train the whole group, publish runs `todo` (indices into specs); the others are
    finished already and keep their folders."""
    partials = [res.partial_dir(f) for f in finals]
    home = partials[todo[0]]  # the group's checkpoint: published last
    ckpt = home / res.CHECKPOINT
    for i, partial in enumerate(partials):
        if i != todo[0] and (partial / res.CHECKPOINT).exists():
            home.mkdir(parents=True, exist_ok=True)  # the group's checkpoint moved home:
            if not ckpt.exists():  # its key decides whether it is still valid
                os.replace(partial / res.CHECKPOINT, ckpt)
        if i not in todo:
            shutil.rmtree(partial, ignore_errors=True)
    for i in todo:
        if partials[i].exists() and not (partials[i] / res.CHECKPOINT).exists():
            shutil.rmtree(partials[i])  # leftovers of an interrupted publish: start over
        partials[i].mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out, method = train_group(
        specs,
        device,
        checkpoint=ckpt,
        checkpoint_every=checkpoint_every,
        progress=[partials[i] / res.PROGRESS if i in todo else None for i in range(len(specs))],
        verbose=verbose,
        graphs=graphs,
        tensorboard=[partials[i] / TB_DIR if i in todo else None for i in range(len(specs))]
        if tensorboard
        else None,
    )
    wall = time.perf_counter() - t0
    state = method.generator_module().state_dict()
    configs: dict[int, dict[str, Any]] = {}
    for r in reversed(todo):  # the checkpoint's folder (todo[0]) goes last
        rows, status = out[r]
        generator = state if len(specs) == 1 else replica_state(state, r)
        every = checkpoint_every or specs[r].eval_every
        configs[r] = _publish(
            specs[r], finals[r], partials[r], rows, status, generator, wall, device, every
        )
        _after_publish(configs[r])
        if verbose:
            log(f"{specs[r].run_name()} {status['status']}")
    return configs


def _after_publish(config: dict[str, Any]) -> None:
    """A hook between two publishes of a group; tests set MCBENCH_TEST_KILL_AFTER_PUBLISH
    to a run name to SIGKILL this process right after that run is published."""
    if os.environ.get("MCBENCH_TEST_KILL_AFTER_PUBLISH") == config["run"]:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _publish(
    spec: RunSpec,
    final: Path,
    partial: Path,
    rows: list[dict],
    status: dict[str, Any],
    generator: dict[str, torch.Tensor],
    wall: float,
    device: torch.device,
    checkpoint_every: int,
) -> dict[str, Any]:
    """Write one finished run's files into its staging folder and publish it."""
    config = {
        **spec.resolved(),
        "params": spec.params,
        "key": spec.key(),
        "run": spec.run_name(),
    }
    final_samples = status.pop("final_samples")
    if status["status"] == "failed":  # a row, so that a run that failed before its
        step = status["failed_step"] or 0  # first evaluation is still counted
        base = {"method": spec.method, "dataset": spec.dataset, "seed": spec.seed}
        rows = [
            *rows,
            {
                **base,
                "step": step,
                "metric": "failed_at_step",
                "value": float(step),
                "wall_time": status["train_time_s"],
            },
        ]
    config.update(status)
    config["wall_time_s"] = wall
    config["environment"] = environment(device)
    config["dataset_info"] = get_dataset(spec.dataset).info()
    config["checkpoint_every"] = checkpoint_every
    config["code"] = code_identity(spec.method, spec.params, "regularizers" in config)
    if (partial / TB_DIR).is_dir():
        config["tensorboard"] = TB_DIR  # the run's TensorBoard event files (not checked)
    res.write_csv_atomic(partial / "metrics.csv", pd.DataFrame(rows, columns=res.COLUMNS))
    buf = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in generator.items()}, buf)
    res.write_bytes_atomic(partial / "generator.pt", buf.getvalue())
    if final_samples is not None:
        get_dataset(spec.dataset).artifacts(final_samples, partial)
    config["files"] = {n: res.sha256_file(partial / n) for n in res.CHECKED_FILES}
    config["complete"] = True  # written last: a config.json without it is unfinished
    config = json.loads(json.dumps(config, default=str))  # as it will read back
    config["checksum"] = res.config_checksum(config)  # an edit anywhere is noticed
    for name in (res.CHECKPOINT, res.PROGRESS):
        (partial / name).unlink(missing_ok=True)
    for tmp in partial.glob(".*.tmp"):  # left by a process killed mid-write
        tmp.unlink(missing_ok=True)
    res.write_json_atomic(partial / "config.json", config)
    res.publish(partial, final)
    return config
