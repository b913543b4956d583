"""The runner: trains one (method, dataset, seed, hyperparameters, budget) run.

It owns everything that is not the method: device, seeds, the real-data stream, the
evaluation schedule, timing (evaluation excluded), NaN detection and the run's files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
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
from mcbench.plugin.method import rng_state, set_rng_state
from mcbench.plugin.protocol import get_protocol, make_problem
from mcbench.plugin.registry import resolve
from mcbench.plugin.replicas import replica_state
from mcbench.run import store as res
from mcbench.run.graphs import capture_step, side_stream_step

EVAL_CHUNK = 65_536
GRAPH_WARMUP = 3  # eager updates before a step is captured (optimiser states exist)


@dataclass(frozen=True)
class RunSpec:
    """One run. `method` is a selector (``pacgan[m=3]``); `params` more overrides."""

    method: str
    dataset: str
    seed: int
    steps: int
    eval_every: int
    eval_samples: int
    params: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> dict[str, Any]:
        """The full configuration that determines the numbers (hashed for the key)."""
        entry, cfg = resolve(self.method, self.params)
        ds = get_dataset(self.dataset)
        return {
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
            "protocol": get_protocol(ds.family).as_dict(),
        }

    def key(self) -> str:
        blob = json.dumps(self.resolved(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def run_name(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.method)
        return f"{safe}-{self.dataset}-s{self.seed}-{self.key()}"


def derive_seed(seed: int, stream: str) -> int:
    """Independent, reproducible seeds per purpose (init, data, method noise, eval)."""
    h = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate(method, n: int, rng: torch.Generator | list[torch.Generator]) -> torch.Tensor:
    """n samples in chunks, moved to the CPU, drawn with the evaluation stream `rng`
    (with replicas: one stream per replica, samples (R, n, ...), smaller chunks)."""
    grouped = isinstance(rng, list)
    chunk = max(1024, EVAL_CHUNK // len(rng)) if grouped else EVAL_CHUNK
    out = [method.sample(min(chunk, n - s), rng).float().cpu() for s in range(0, n, chunk)]
    return torch.cat(out, dim=1 if grouped else 0)


def _setup(spec: RunSpec) -> tuple[Any, Any, Any, Any]:
    """A run's method entry, config, dataset and protocol; seeds the global numpy and
    Python streams for code that uses them."""
    entry, cfg = resolve(spec.method, spec.params)
    ds = get_dataset(spec.dataset)
    np.random.seed(derive_seed(spec.seed, "numpy") % 2**32)
    random.seed(derive_seed(spec.seed, "python"))
    return entry, cfg, ds, get_protocol(ds.family)


def build(
    spec: RunSpec, device: torch.device, capturable: bool = False
) -> tuple[Any, Any, torch.Generator]:
    """The method of a run, seeded and on `device`, with its real-data stream."""
    entry, cfg, ds, proto = _setup(spec)
    torch.manual_seed(derive_seed(spec.seed, "init"))
    data_rng = _generator(device, derive_seed(spec.seed, "data"))
    method_rng = _generator(device, derive_seed(spec.seed, "method"))
    problem = make_problem(ds, proto, device, method_rng, data_rng, capturable=capturable)
    return entry.cls(problem, cfg), ds, data_rng


def groupable(specs: list[RunSpec]) -> bool:
    """Specs that may train as replicas: one method, dataset, budget and hyperparameters,
    distinct seeds, and a method whose `step` is written for replicas."""
    if len(specs) < 2:
        return False
    first = specs[0]
    same = all(dataclasses.replace(s, seed=first.seed) == first for s in specs) and len(
        {s.seed for s in specs}
    ) == len(specs)
    return same and resolve(first.method, first.params)[0].cls.replicas


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
    data_rngs = [_generator(device, derive_seed(s.seed, "data")) for s in specs]
    method_rngs = [_generator(device, derive_seed(s.seed, "method")) for s in specs]
    problem = make_problem(
        ds, proto, device, method_rngs, data_rngs, init_states, capturable=capturable
    )
    return entry.cls(problem, cfg), ds, data_rngs


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
    )


def load_method(run_dir: Path, device: torch.device | None = None) -> Any:
    """Rebuild a finished run's method with its final generator loaded (for reports)."""
    config = res.read_config(Path(run_dir))
    device = device or torch.device("cpu")
    method, _, _ = build(spec_of(config), device)
    state = torch.load(Path(run_dir) / "generator.pt", map_location=device)
    method.generator_module().load_state_dict(state)
    return method


def _host_state(device: torch.device) -> dict[str, Any]:
    """Global RNG states a method or dataset may draw from without a generator."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_out(np.random.get_state()),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _numpy_state_out(st: tuple) -> list:
    return [st[0], torch.from_numpy(np.asarray(st[1], dtype=np.int64)), *st[2:]]


def _set_host_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class _Progress:
    """What a run (or a group of replicas) has done so far; saved in each checkpoint
    with the method's state. Rows carry their seed; `failed` maps the seed of each
    replica that failed to its step and reason."""

    step: int = 0
    rows: list[dict] = field(default_factory=list)
    train_time: float = 0.0
    interval_time: float = 0.0
    interval_steps: int = 0
    resumed_from: list[int] = field(default_factory=list)
    failed: dict[int, dict[str, Any]] = field(default_factory=dict)


def _save_checkpoint(path: Path, key: str, method, data_rng, device, prog: _Progress):
    res.save_checked(
        path,
        {
            "key": key,
            "progress": dataclasses.asdict(prog),
            "method": method.state_dict(),
            "method_extra": method.extra_state(),
            "rng_method": rng_state(method.problem.rng),
            "rng_data": rng_state(data_rng),
            "rng_host": _host_state(device),
        },
    )


def _load_checkpoint(path: Path, key: str, method, data_rng, device) -> _Progress:
    ck = res.load_checked(path)
    if ck["key"] != key:
        raise ValueError(f"{path} belongs to another configuration")
    method.load_state_dict(ck["method"])
    method.load_extra_state(ck["method_extra"])
    set_rng_state(method.problem.rng, ck["rng_method"])
    set_rng_state(data_rng, ck["rng_data"])
    _set_host_state(ck["rng_host"], device)
    return _Progress(**ck["progress"])


def _log(msg: str) -> None:
    print(f"mcbench: {msg}", file=sys.stderr, flush=True)


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
    progress: list[Path] | None = None,
    verbose: bool = False,
    graphs: bool = False,
) -> tuple[list[tuple[list[dict], dict]], Any]:
    """Train runs that differ only in seed as vectorised replicas (one run: the plain
    method); returns ((rows, status) per spec, method).

    Each replica is recorded as its own run: its losses, evaluations, divergence and
    failure are its own (a replica that diverges is marked failed at its step while the
    others go on). `step_time_ms` is the group's time per update divided by the number
    of replicas: the cost of one seed's update. With `graphs` on a CUDA device, after
    GRAPH_WARMUP eager updates the update is captured as a CUDA graph and replayed
    (mcbench.run.graphs); where capture is impossible or fails, training goes on eagerly.
    """
    device = device or default_device()
    spec = specs[0]
    every = checkpoint_every or spec.eval_every
    grouped = len(specs) > 1
    if grouped and not groupable(specs):
        raise ValueError("these runs cannot train as replicas of one another")
    key = group_key(specs)

    capture = graphs and device.type == "cuda"
    execution = "graph" if capture else "eager"

    def make():
        if grouped:
            return build_group(specs, device, capturable=capture)
        return build(spec, device, capturable=capture)

    method, ds, data_rng = make()
    prog = _Progress()
    if checkpoint is not None and checkpoint.exists():
        try:
            prog = _load_checkpoint(checkpoint, key, method, data_rng, device)
            prog.resumed_from.append(prog.step)
            if verbose:
                _log(f"{spec.run_name()} resumes at step {prog.step}")
        except Exception as exc:  # damaged or foreign: start over, never half-load
            _log(f"{spec.run_name()}: ignoring checkpoint ({type(exc).__name__}: {exc})")
            method, ds, data_rng = make()
            prog = _Progress()
    n_rep = len(specs)
    seeds = [s.seed for s in specs]
    alive = [r for r in range(n_rep) if seeds[r] not in prog.failed]
    batch_size = method.problem.batch_size
    final_samples: list[torch.Tensor | None] = [None] * n_rep
    first_bad = torch.zeros(n_rep if grouped else (), dtype=torch.long, device=device)
    latest: list[dict[str, float]] = [{} for _ in specs]
    for r in range(n_rep):
        mine = [row for row in prog.rows if row["seed"] == seeds[r]]
        if mine:
            latest[r] = {x["metric"]: x["value"] for x in mine if x["step"] == mine[-1]["step"]}
    step = prog.step

    def part(t, r: int):
        return t[r] if grouped else t

    def record(r: int, step: int, metric: str, value: float) -> None:
        prog.rows.append(
            {
                "method": spec.method,
                "dataset": spec.dataset,
                "seed": seeds[r],
                "step": step,
                "metric": metric,
                "value": float(value),  # plain floats: checkpoints load with weights_only
                "wall_time": prog.train_time,
            }
        )
        latest[r][metric] = float(value)

    def fail(r: int, step: int, reason: str, **extra: Any) -> None:
        prog.failed[seeds[r]] = {"failed_step": step, "reason": reason, **extra}
        alive.remove(r)

    stepper = side_stream_step(method) if capture else method.step
    try:
        for step in range(prog.step + 1, spec.steps + 1):
            if not alive:
                break
            real = method.problem.sample_real(batch_size)
            if capture and step - prog.step == GRAPH_WARMUP + 1:
                try:
                    stepper = capture_step(method, real) or method.step
                except Exception as exc:  # capture is an optimisation: never fatal
                    stepper = method.step
                    execution = f"eager (capture failed: {type(exc).__name__}: {exc})"
                    _log(f"{spec.run_name()}: CUDA graph capture failed, eager instead: {exc}")
            t0 = time.perf_counter()
            losses = stepper(real)
            _sync(device)
            dt = time.perf_counter() - t0
            prog.train_time += dt
            prog.interval_time += dt
            prog.interval_steps += 1
            if losses:  # the first step with a non-finite loss, kept on the device (no
                # host sync per step; NaN or inf in any loss makes the sum non-finite)
                vals = list(losses.values())
                total = vals[0]
                for v in vals[1:]:
                    total = total + v
                ok = torch.isfinite(torch.as_tensor(total)) | (first_bad > 0)
                first_bad = torch.where(ok, first_bad, step)
            evaluate = step % spec.eval_every == 0 or step == spec.steps
            save = checkpoint is not None and step % every == 0 and step < spec.steps
            if evaluate or save:
                bad = first_bad.reshape(-1).tolist()
                for r in list(alive):
                    if bad[r]:
                        fail(r, bad[r], f"a loss is NaN or inf at step {bad[r]}")
            if evaluate and alive:
                for r in alive:
                    latest[r] = {}  # filled by `record` with this evaluation's values
                    for k, v in losses.items():
                        record(r, step, f"loss_{k}", float(part(v, r)))
                    ms = 1000 * prog.interval_time / prog.interval_steps / n_rep
                    record(r, step, "step_time_ms", ms)
                prog.interval_time, prog.interval_steps = 0.0, 0
                rngs = [_generator(device, derive_seed(sd, f"eval{step}")) for sd in seeds]
                x = generate(method, spec.eval_samples, rngs if grouped else rngs[0])
                diagnostics = method.diagnostics()
                for r in list(alive):
                    xr = part(x, r)
                    if not torch.isfinite(xr).all():
                        fail(r, step, f"generated samples contain NaN or inf at step {step}")
                        continue
                    for k, v in ds.evaluate(xr).items():
                        record(r, step, k, v)
                    for k, v in diagnostics.items():
                        record(r, step, k, float(part(v, r)))
                    final_samples[r] = xr
                    if verbose:
                        shown = " ".join(f"{k}={v:.4g}" for k, v in latest[r].items())
                        _log(f"{specs[r].run_name()} step {step}/{spec.steps} {shown}")
            if save and alive:
                prog.step = step
                _save_checkpoint(checkpoint, key, method, data_rng, device, prog)
            if progress is not None and (evaluate or save):
                for r in alive:
                    report_progress(
                        progress[r], specs[r], step, latest[r], prog.train_time, prog.step
                    )
    except McbenchError:
        raise
    except Exception as exc:  # a method bug must not take the suite down with it
        reason = f"{type(exc).__name__}: {exc}"
        for r in list(alive):
            fail(r, step, reason, traceback=traceback.format_exc())
    out = []
    for r in range(n_rep):
        status: dict[str, Any] = {"status": "ok", "failed_step": None, "reason": None}
        if seeds[r] in prog.failed:
            status = {"status": "failed", **prog.failed[seeds[r]]}
        status["train_time_s"] = prog.train_time
        status["resumed_from"] = list(prog.resumed_from)
        status["final_samples"] = final_samples[r]
        status["replicas"] = n_rep
        status["execution"] = execution
        rows = [row for row in prog.rows if row["seed"] == seeds[r]]
        out.append((rows, status))
    return out, method


def report_progress(
    path: Path,
    spec: RunSpec,
    step: int,
    latest: dict[str, float],
    train_time: float,
    checkpoint_step: int = 0,
) -> None:
    """progress.json of a running run (its step, the metrics of its latest evaluation
    and the step a restart would resume from), read by `mcbench status`."""
    res.write_json_atomic(
        path,
        {
            "run": spec.run_name(),
            "step": step,
            "steps": spec.steps,
            "checkpoint_step": checkpoint_step,
            "metrics": latest,
            "train_time_s": train_time,
            "updated": time.time(),
            "host": platform.node(),
            "pid": os.getpid(),
        },
    )


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


def finished(final: Path, retry_failed: bool = False) -> dict[str, Any] | None:
    """The config of a published run that needs no work: complete, its files intact,
    and ok (or failed, unless `retry_failed`)."""
    cfg = res.verify_run(final)
    if cfg is None:
        return None
    if cfg.get("status") == "ok" or (cfg.get("status") == "failed" and not retry_failed):
        return cfg
    return None


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
) -> dict[str, Any]:
    """Train `spec` unless its folder already holds a finished run; publish atomically.

    The run trains in RESULTS_DIR/runs/.<run>.partial (its checkpoint and progress live
    there), under a lock so that no two processes train it at once; the finished folder
    appears in one rename and the checkpoint goes with the staging folder.
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
) -> list[dict[str, Any]]:
    """`run` for runs that differ only in seed, trained together as replicas: each run
    is locked, staged, checkpointed (the group's checkpoint lives in the first run's
    staging folder) and published on its own, exactly like a sequential run."""
    device = device or default_device()
    finals = [Path(results_dir) / "runs" / s.run_name() for s in specs]
    outcomes: dict[int, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        todo = []
        for i, (spec, final) in enumerate(zip(specs, finals, strict=True)):
            if not force and (done := finished(final, retry_failed)) is not None:
                outcomes[i] = {**done, "skipped": True}
                continue
            if not stack.enter_context(res.run_lock(res.lock_path(final))):
                outcomes[i] = {
                    "run": spec.run_name(),
                    "status": "busy",
                    "skipped": True,
                    "reason": "another process is training this run",
                }
                continue
            if not force and (done := finished(final, retry_failed)) is not None:
                outcomes[i] = {**done, "skipped": True}  # published while we waited
                continue
            todo.append(i)
        if todo:
            group = [specs[i] for i in todo]
            published = _train_and_publish(
                group, [finals[i] for i in todo], device, checkpoint_every, verbose, graphs
            )
            outcomes.update(zip(todo, published, strict=True))
    return [outcomes[i] for i in range(len(specs))]


def _train_and_publish(
    specs: list[RunSpec],
    finals: list[Path],
    device: torch.device,
    checkpoint_every: int | None,
    verbose: bool,
    graphs: bool = False,
) -> list[dict[str, Any]]:
    partials = [res.partial_dir(f) for f in finals]
    ckpt = partials[0] / res.CHECKPOINT
    for partial in partials:
        if partial.exists() and not (partial / res.CHECKPOINT).exists():
            shutil.rmtree(partial)  # leftovers of an interrupted publish: start over
        partial.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out, method = train_group(
        specs,
        device,
        checkpoint=ckpt,
        checkpoint_every=checkpoint_every,
        progress=[p / res.PROGRESS for p in partials],
        verbose=verbose,
        graphs=graphs,
    )
    wall = time.perf_counter() - t0
    state = method.generator_module().state_dict()
    configs: list[dict[str, Any]] = [{} for _ in specs]
    # The first run's folder holds the group's checkpoint: it is published last.
    for r in reversed(range(len(specs))):
        rows, status = out[r]
        generator = state if len(specs) == 1 else replica_state(state, r)
        every = checkpoint_every or specs[r].eval_every
        configs[r] = _publish(
            specs[r], finals[r], partials[r], rows, status, generator, wall, device, every
        )
        if verbose:
            _log(f"{specs[r].run_name()} {status['status']}")
    return configs


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
    res.write_csv_atomic(partial / "metrics.csv", pd.DataFrame(rows, columns=res.COLUMNS))
    buf = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in generator.items()}, buf)
    res.write_bytes_atomic(partial / "generator.pt", buf.getvalue())
    if final_samples is not None:
        get_dataset(spec.dataset).artifacts(final_samples, partial)
    config["files"] = {n: res.sha256_file(partial / n) for n in res.CHECKED_FILES}
    config["complete"] = True  # written last: a config.json without it is unfinished
    for name in (res.CHECKPOINT, res.PROGRESS):
        (partial / name).unlink(missing_ok=True)
    for tmp in partial.glob(".*.tmp"):  # left by a process killed mid-write
        tmp.unlink(missing_ok=True)
    res.write_json_atomic(partial / "config.json", config)
    res.publish(partial, final)
    return config
