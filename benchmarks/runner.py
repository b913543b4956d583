"""The runner: trains one (method, dataset, seed, hyperparameters, budget) run.

It owns everything that is not the method: device, seeds, the real-data stream, the
evaluation schedule, timing (evaluation excluded), NaN detection and the run's files.
"""

from __future__ import annotations

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
from mcbench import results as res
from mcbench.datasets import get_dataset
from mcbench.errors import McbenchError
from mcbench.protocol import get_protocol, make_problem
from mcbench.registry import resolve

EVAL_CHUNK = 65_536


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


class Diverged(Exception):
    """A loss or the generator's samples became NaN or inf (at `step`)."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate(method, n: int, rng: torch.Generator) -> torch.Tensor:
    """n samples in chunks, moved to the CPU, drawn with the evaluation stream `rng`."""
    out = [
        method.sample(min(EVAL_CHUNK, n - s), rng).float().cpu() for s in range(0, n, EVAL_CHUNK)
    ]
    return torch.cat(out)


def build(spec: RunSpec, device: torch.device) -> tuple[Any, Any, torch.Generator]:
    """The method of a run, seeded and on `device`, with its real-data stream."""
    entry, cfg = resolve(spec.method, spec.params)
    ds = get_dataset(spec.dataset)
    proto = get_protocol(ds.family)
    torch.manual_seed(derive_seed(spec.seed, "init"))
    np.random.seed(derive_seed(spec.seed, "numpy") % 2**32)  # for code that uses the
    random.seed(derive_seed(spec.seed, "python"))  # global numpy or Python streams
    data_rng = _generator(device, derive_seed(spec.seed, "data"))
    method_rng = _generator(device, derive_seed(spec.seed, "method"))
    problem = make_problem(ds, proto, device, method_rng, data_rng)
    return entry.cls(problem, cfg), ds, data_rng


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
    """What a run has done so far; saved in each checkpoint with the method's state."""

    step: int = 0
    rows: list[dict] = field(default_factory=list)
    train_time: float = 0.0
    interval_time: float = 0.0
    interval_steps: int = 0
    resumed_from: list[int] = field(default_factory=list)


def _save_checkpoint(path: Path, spec: RunSpec, method, data_rng, device, prog: _Progress):
    res.save_checked(
        path,
        {
            "key": spec.key(),
            "progress": dataclasses.asdict(prog),
            "method": method.state_dict(),
            "method_extra": method.extra_state(),
            "rng_method": method.problem.rng.get_state(),
            "rng_data": data_rng.get_state(),
            "rng_host": _host_state(device),
        },
    )


def _load_checkpoint(path: Path, spec: RunSpec, method, data_rng, device) -> _Progress:
    ck = res.load_checked(path)
    if ck["key"] != spec.key():
        raise ValueError(f"{path} belongs to another configuration")
    method.load_state_dict(ck["method"])
    method.load_extra_state(ck["method_extra"])
    method.problem.rng.set_state(ck["rng_method"])
    data_rng.set_state(ck["rng_data"])
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
    device = device or default_device()
    every = checkpoint_every or spec.eval_every
    method, ds, data_rng = build(spec, device)
    prog = _Progress()
    if checkpoint is not None and checkpoint.exists():
        try:
            prog = _load_checkpoint(checkpoint, spec, method, data_rng, device)
            prog.resumed_from.append(prog.step)
            if verbose:
                _log(f"{spec.run_name()} resumes at step {prog.step}")
        except Exception as exc:  # damaged or foreign: start over, never half-load
            _log(f"{spec.run_name()}: ignoring checkpoint ({type(exc).__name__}: {exc})")
            method, ds, data_rng = build(spec, device)
            prog = _Progress()
    batch_size = method.problem.batch_size
    base = {"method": spec.method, "dataset": spec.dataset, "seed": spec.seed}
    status: dict[str, Any] = {"status": "ok", "failed_step": None, "reason": None}
    final_samples = None
    first_bad = torch.zeros((), dtype=torch.long, device=device)  # 0: all losses finite
    last = prog.rows[-1]["step"] if prog.rows else None
    latest = {r["metric"]: r["value"] for r in prog.rows if r["step"] == last}
    step = prog.step

    def record(step: int, metric: str, value: float) -> None:
        prog.rows.append(
            {
                **base,
                "step": step,
                "metric": metric,
                "value": float(value),  # plain floats: checkpoints load with weights_only
                "wall_time": prog.train_time,
            }
        )

    try:
        for step in range(prog.step + 1, spec.steps + 1):
            real = ds.sample(batch_size, data_rng, device)
            t0 = time.perf_counter()
            losses = method.step(real)
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
            if (evaluate or save) and int(first_bad):
                raise Diverged(f"a loss is NaN or inf at step {int(first_bad)}", int(first_bad))
            if evaluate:
                for k, v in losses.items():
                    record(step, f"loss_{k}", float(v))
                record(step, "step_time_ms", 1000 * prog.interval_time / prog.interval_steps)
                prog.interval_time, prog.interval_steps = 0.0, 0
                eval_rng = _generator(device, derive_seed(spec.seed, f"eval{step}"))
                x = generate(method, spec.eval_samples, eval_rng)
                if not torch.isfinite(x).all():
                    raise Diverged(f"generated samples contain NaN or inf at step {step}", step)
                for k, v in ds.evaluate(x).items():
                    record(step, k, v)
                for k, v in method.diagnostics().items():
                    record(step, k, float(v))
                final_samples = x
                latest = {r["metric"]: r["value"] for r in prog.rows if r["step"] == step}
                if verbose:
                    shown = " ".join(f"{k}={v:.4g}" for k, v in latest.items())
                    _log(f"{spec.run_name()} step {step}/{spec.steps} {shown}")
            if save:
                prog.step = step
                _save_checkpoint(checkpoint, spec, method, data_rng, device, prog)
            if progress is not None and (evaluate or save):
                report_progress(progress, spec, step, latest, prog.train_time, prog.step)
    except Diverged as exc:
        status = {"status": "failed", "failed_step": exc.step, "reason": str(exc)}
    except McbenchError:
        raise
    except Exception as exc:  # a method bug must not take the suite down with it
        status = {
            "status": "failed",
            "failed_step": step,
            "reason": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    status["train_time_s"] = prog.train_time
    status["resumed_from"] = prog.resumed_from
    status["final_samples"] = final_samples
    return prog.rows, method, status


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
) -> dict[str, Any]:
    """Train `spec` unless its folder already holds a finished run; publish atomically.

    The run trains in RESULTS_DIR/runs/.<run>.partial (its checkpoint and progress live
    there), under a lock so that no two processes train it at once; the finished folder
    appears in one rename and the checkpoint goes with the staging folder.
    """
    device = device or default_device()
    final = Path(results_dir) / "runs" / spec.run_name()
    if not force and (done := finished(final, retry_failed)) is not None:
        return {**done, "skipped": True}
    partial = res.partial_dir(final)
    with res.run_lock(res.lock_path(final)) as mine:
        if not mine:
            return {
                "run": spec.run_name(),
                "status": "busy",
                "skipped": True,
                "reason": "another process is training this run",
            }
        if not force and (done := finished(final, retry_failed)) is not None:
            return {**done, "skipped": True}  # published while we waited
        ckpt = partial / res.CHECKPOINT
        if partial.exists() and not ckpt.exists():
            shutil.rmtree(partial)  # leftovers of an interrupted publish: start over
        partial.mkdir(parents=True, exist_ok=True)
        config = {
            **spec.resolved(),
            "params": spec.params,
            "key": spec.key(),
            "run": spec.run_name(),
        }
        t0 = time.perf_counter()
        rows, method, status = train(
            spec,
            device,
            checkpoint=ckpt,
            checkpoint_every=checkpoint_every,
            progress=partial / res.PROGRESS,
            verbose=verbose,
        )
        final_samples = status.pop("final_samples")
        if status["status"] == "failed":  # a row, so that a run that failed before its
            step = status["failed_step"] or 0  # first evaluation is still counted
            base = {"method": spec.method, "dataset": spec.dataset, "seed": spec.seed}
            wall = status["train_time_s"]
            rows.append(
                {
                    **base,
                    "step": step,
                    "metric": "failed_at_step",
                    "value": float(step),
                    "wall_time": wall,
                }
            )
        config.update(status)
        config["wall_time_s"] = time.perf_counter() - t0
        config["environment"] = environment(device)
        config["dataset_info"] = get_dataset(spec.dataset).info()
        config["checkpoint_every"] = checkpoint_every or spec.eval_every
        res.write_csv_atomic(partial / "metrics.csv", pd.DataFrame(rows, columns=res.COLUMNS))
        buf = io.BytesIO()
        torch.save(method.generator_module().state_dict(), buf)
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
    if verbose:
        _log(f"{spec.run_name()} {config['status']}")
    return config
