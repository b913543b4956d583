"""A live view of long runs: every recorded curve value as a TensorBoard scalar.

Optional (``pip install 'mcbench[tensorboard]'``) and off by default: `mcbench run
--tensorboard`, or ``tensorboard = true`` in a suite. Each run of a group writes its own
event files into its folder's `tb/`: while it trains, the staging folder
``runs/.<run>.partial/tb/``, published with the run as ``runs/<run>/tb/``; so
``tensorboard --logdir RESULTS/runs`` shows each seed as a run of its own. A value is
written when the Ledger records it (tag = its metric name in metrics.csv, step = its
step) and the files are flushed at each evaluation, before any checkpoint, so a live
TensorBoard shows every evaluation as it lands. A resumed run purges from the view
what was written after its checkpoint (it will write those steps again), so each step
shows once. Besides `mcbench status`, which reads progress.json, not these files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcbench.errors import McbenchError

TB_DIR = "tb"  # a run folder's TensorBoard subfolder
INSTALL = "pip install 'mcbench[tensorboard]'"


def summary_writer() -> type:
    """torch's SummaryWriter class; a one-line McbenchError where TensorBoard is missing
    (torch.utils.tensorboard needs the `tensorboard` package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise McbenchError(f"--tensorboard needs TensorBoard: {INSTALL}") from None
    return SummaryWriter


def check_available() -> None:
    """Fail before any work when --tensorboard cannot be honoured."""
    summary_writer()


def _has_events(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("events.out.tfevents.*"))


class LiveView:
    """One SummaryWriter per run of a group: `folders[r]` for replica r (None: that run
    writes none, e.g. a finished member retrained with its group). `resumed_at`: the
    step the group resumes after (0: a fresh start); anything an earlier attempt wrote
    beyond it is purged from the view."""

    def __init__(self, folders: list[Path | None], resumed_at: int = 0) -> None:
        writer = summary_writer()
        self.writers: list[Any] = []
        for folder in folders:
            if folder is None:
                self.writers.append(None)
                continue
            folder = Path(folder)
            # an earlier attempt's files: hide what it wrote after the checkpoint
            purge = resumed_at + 1 if _has_events(folder) else None
            self.writers.append(writer(log_dir=str(folder), purge_step=purge))

    def record(self, r: int, step: int, metric: str, value: float) -> None:
        w = self.writers[r]
        if w is not None:
            w.add_scalar(metric, value, step)

    def flush(self) -> None:
        for w in self.writers:
            if w is not None:
                w.flush()

    def close(self) -> None:
        for w in self.writers:
            if w is not None:
                w.close()
        self.writers = [None] * len(self.writers)
