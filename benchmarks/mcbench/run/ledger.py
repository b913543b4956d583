"""Per-replica bookkeeping of a training group; one seed is a group of one.

A group of R seeds trains as one method but records R runs: each replica has its own
metric rows, latest metrics and failure. `Progress` is what a checkpoint saves of it;
`Ledger` adds what is rebuilt on resume (who is alive, the final samples).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


class SpecLike(Protocol):
    """What the ledger reads of a RunSpec (mcbench.run.runner)."""

    method: str
    dataset: str
    seed: int


@dataclass
class Progress:
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

    def timed(self, seconds: float) -> None:
        """Count one update that took `seconds` (evaluation is never timed)."""
        self.train_time += seconds
        self.interval_time += seconds
        self.interval_steps += 1

    def take_step_time_ms(self, replicas: int) -> float:
        """Mean time per update since the last call, per replica (the cost of one seed's
        update), and start a new interval."""
        ms = 1000 * self.interval_time / self.interval_steps / replicas
        self.interval_time, self.interval_steps = 0.0, 0
        return ms


class Ledger:
    """Rows, latest metrics, failures and final samples of each replica r of a group
    (r indexes `specs`). `on_record(r, step, metric, value)`, if given, sees every value
    as it is recorded (the TensorBoard live view)."""

    def __init__(
        self,
        specs: list[SpecLike],
        progress: Progress,
        on_record: Callable[[int, int, str, float], None] | None = None,
    ) -> None:
        self.method, self.dataset = specs[0].method, specs[0].dataset
        self.seeds = [s.seed for s in specs]
        self.progress = progress
        self.on_record = on_record
        self.alive = [r for r, sd in enumerate(self.seeds) if sd not in progress.failed]
        self.final_samples: list[torch.Tensor | None] = [None] * len(specs)
        self.latest: list[dict[str, float]] = [{} for _ in specs]
        for r, sd in enumerate(self.seeds):  # a resumed run shows its last evaluation
            mine = [row for row in progress.rows if row["seed"] == sd]
            if mine:
                last = mine[-1]["step"]
                self.latest[r] = {x["metric"]: x["value"] for x in mine if x["step"] == last}

    @property
    def replicas(self) -> int:
        return len(self.seeds)

    def record(self, r: int, step: int, metric: str, value: float) -> None:
        self.progress.rows.append(
            {
                "method": self.method,
                "dataset": self.dataset,
                "seed": self.seeds[r],
                "step": step,
                "metric": metric,
                "value": float(value),  # plain floats: checkpoints load with weights_only
                "wall_time": self.progress.train_time,
            }
        )
        self.latest[r][metric] = float(value)
        if self.on_record is not None:
            self.on_record(r, step, metric, float(value))

    def fail(self, r: int, step: int, reason: str, **extra: Any) -> None:
        """Mark replica r failed at `step`; the others go on. A replica fails once: its
        first failure is the one recorded."""
        if r not in self.alive:
            return
        self.progress.failed[self.seeds[r]] = {"failed_step": step, "reason": reason, **extra}
        self.alive.remove(r)

    def outcomes(self, execution: str) -> list[tuple[list[dict], dict[str, Any]]]:
        """(rows, status) of each replica, in the order of `specs`."""
        prog, out = self.progress, []
        for r, sd in enumerate(self.seeds):
            status: dict[str, Any] = {"status": "ok", "failed_step": None, "reason": None}
            if sd in prog.failed:
                status = {"status": "failed", **prog.failed[sd]}
            status["train_time_s"] = prog.train_time
            status["resumed_from"] = list(prog.resumed_from)
            status["final_samples"] = self.final_samples[r]
            status["replicas"] = self.replicas
            status["execution"] = execution
            out.append(([row for row in prog.rows if row["seed"] == sd], status))
        return out
