"""The runner: trains one (method, dataset, seed, hyperparameters, budget) run.

It owns everything that is not the method: device, seeds, the real-data stream, the
evaluation schedule, timing (evaluation excluded), NaN detection and the run's files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mcbench
import pandas as pd
import torch
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
    """A loss or the generator's samples became NaN or inf."""


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


def train(spec: RunSpec, device: torch.device | None = None) -> tuple[list[dict], Any, dict]:
    """Train one run in memory; returns (metric rows, method, status info)."""
    device = device or default_device()
    method, ds, data_rng = build(spec, device)
    batch_size = method.problem.batch_size
    rows: list[dict] = []
    base = {"method": spec.method, "dataset": spec.dataset, "seed": spec.seed}
    train_time = 0.0
    interval_time = 0.0
    interval_steps = 0
    status = {"status": "ok", "failed_step": None, "reason": None}
    final_samples = None
    step = 0

    def record(step: int, metric: str, value: float) -> None:
        rows.append(
            {**base, "step": step, "metric": metric, "value": value, "wall_time": train_time}
        )

    try:
        for step in range(1, spec.steps + 1):
            real = ds.sample(batch_size, data_rng, device)
            t0 = time.perf_counter()
            losses = method.step(real)
            _sync(device)
            dt = time.perf_counter() - t0
            train_time += dt
            interval_time += dt
            interval_steps += 1
            if step % spec.eval_every == 0 or step == spec.steps:
                for k, v in losses.items():
                    value = float(v)
                    if not math.isfinite(value):
                        raise Diverged(f"loss {k} is {value} at step {step}")
                    record(step, f"loss_{k}", value)
                record(step, "step_time_ms", 1000 * interval_time / interval_steps)
                interval_time, interval_steps = 0.0, 0
                eval_rng = _generator(device, derive_seed(spec.seed, f"eval{step}"))
                x = generate(method, spec.eval_samples, eval_rng)
                if not torch.isfinite(x).all():
                    raise Diverged(f"generated samples contain NaN or inf at step {step}")
                for k, v in ds.evaluate(x).items():
                    record(step, k, v)
                for k, v in method.diagnostics().items():
                    record(step, k, float(v))
                final_samples = x
    except Diverged as exc:
        status = {"status": "failed", "failed_step": step, "reason": str(exc)}
    except McbenchError:
        raise
    except Exception as exc:  # a method bug must not take the suite down with it
        status = {
            "status": "failed",
            "failed_step": step,
            "reason": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    status["train_time_s"] = train_time
    status["final_samples"] = final_samples
    return rows, method, status


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "mcbench": mcbench.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def run(
    spec: RunSpec, results_dir: Path, device: torch.device | None = None, force: bool = False
) -> dict[str, Any]:
    """Train `spec` unless its folder already holds a finished run; publish atomically."""
    device = device or default_device()
    final = Path(results_dir) / "runs" / spec.run_name()
    if not force and (final / "config.json").exists():
        try:
            done = res.read_config(final)
            if done.get("status") == "ok":
                return {**done, "skipped": True}
        except (OSError, ValueError):
            pass  # unreadable: train again
    config = {**spec.resolved(), "params": spec.params, "key": spec.key(), "run": spec.run_name()}
    t0 = time.perf_counter()
    rows, method, status = train(spec, device)
    final_samples = status.pop("final_samples")
    config.update(status)
    config["wall_time_s"] = time.perf_counter() - t0
    config["environment"] = environment(device)
    config["dataset_info"] = get_dataset(spec.dataset).info()
    stage = res.staging_dir(final)
    pd.DataFrame(rows, columns=res.COLUMNS).to_csv(stage / "metrics.csv", index=False)
    torch.save(method.generator_module().state_dict(), stage / "generator.pt")
    if final_samples is not None:
        get_dataset(spec.dataset).artifacts(final_samples, stage)
    res.write_json_atomic(stage / "config.json", config)
    res.publish(stage, final)
    return config
