"""What a running group tells the outside world: a progress.json per run (its step, latest
metrics and the step a restart would resume from, read by `mcbench status` from any
machine) and, when verbose, a log line per run and evaluation."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Protocol

from mcbench.run import store as res
from mcbench.run.ledger import Ledger


class SpecLike(Protocol):
    """What progress reads of a RunSpec (mcbench.run.runner)."""

    steps: int

    def run_name(self) -> str: ...


def log(msg: str) -> None:
    print(f"mcbench: {msg}", file=sys.stderr, flush=True)


def report_progress(
    path: Path,
    spec: SpecLike,
    step: int,
    latest: dict[str, float],
    train_time: float,
    checkpoint_step: int = 0,
    checkpoint: Path | None = None,
) -> None:
    """progress.json of a running run (its step, the metrics of its latest evaluation
    and the step a restart would resume from), read by `mcbench status`. `checkpoint`:
    the group's checkpoint file (in the first run's staging folder, for every member)."""
    res.write_json_atomic(
        path,
        {
            "run": spec.run_name(),
            "step": step,
            "steps": spec.steps,
            "checkpoint_step": checkpoint_step,
            # relative to runs/, so that any machine that sees the folder can find it
            "checkpoint_file": None
            if checkpoint is None
            else f"{checkpoint.parent.name}/{checkpoint.name}",
            "metrics": latest,
            "train_time_s": train_time,
            "updated": time.time(),
            "host": platform.node(),
            "pid": os.getpid(),
        },
    )


class Reporter:
    """Progress of each live run of a group: `paths[r]` (None: no files) gets run r's
    progress.json; with `verbose`, each evaluation is logged to stderr. `checkpoint` is
    the group's checkpoint file, named in every member's progress.json."""

    def __init__(
        self,
        specs: list[SpecLike],
        paths: list[Path | None] | None,
        verbose: bool,
        checkpoint: Path | None = None,
    ) -> None:
        self.specs, self.paths, self.verbose = specs, paths, verbose
        self.checkpoint = checkpoint

    def __call__(self, step: int, ledger: Ledger, evaluated: bool) -> None:
        for r in ledger.alive:
            spec = self.specs[r]
            if evaluated and self.verbose:
                shown = " ".join(f"{k}={v:.4g}" for k, v in ledger.latest[r].items())
                log(f"{spec.run_name()} step {step}/{spec.steps} {shown}")
            if self.paths is not None and self.paths[r] is not None:
                prog = ledger.progress
                report_progress(
                    self.paths[r],
                    spec,
                    step,
                    ledger.latest[r],
                    prog.train_time,
                    prog.step,
                    self.checkpoint,
                )
