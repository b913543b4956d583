"""Results on disk: one folder per run, written atomically, and one table per suite.

Layout of a results directory::

    RESULTS_DIR/
      results.csv                 all runs' metric rows (pandas reads it in one line);
                                  rebuilt by the parent process only
      runs/<method>-<dataset>-s<seed>-<key>/
        config.json               the run's full configuration, status, environment and
                                  the sha256 of its other files (written last)
        metrics.csv               tidy rows: method,dataset,seed,step,metric,value,wall_time
        generator.pt              the final generator's state_dict
      runs/.<run name>.partial/   a run in progress, trained by one process at a time
        checkpoint.pt             last checkpoint (payload + sha256 trailer)
        progress.json             step, latest metrics, host and pid
      runs/.<run name>.lock       held (flock) by the process training the run

Every file is written to a temporary name and renamed into place, so a reader sees the
old file or the new one, never half of one; a file that fails its checksum anyway (a
truncated copy, a damaged disk) makes the run count as unfinished, so it is redone.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = ["method", "dataset", "seed", "step", "metric", "value", "wall_time"]
CHECKPOINT = "checkpoint.pt"
PROGRESS = "progress.json"
# Files of a finished run whose checksums config.json records.
CHECKED_FILES = ("metrics.csv", "generator.pt")
_MAGIC = b"MCBENCH-SHA256:"


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write then rename: readers never see a partial file; fsync so it survives a crash."""
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
    write_bytes_atomic(path, text.encode())


def write_csv_atomic(path: Path, df: pd.DataFrame) -> None:
    write_bytes_atomic(path, df.to_csv(index=False).encode())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checked(path: Path, obj: Any) -> None:
    """torch.save `obj` with a sha256 trailer, atomically (checkpoints)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    write_bytes_atomic(path, payload + _MAGIC + hashlib.sha256(payload).digest())


def load_checked(path: Path) -> Any:
    """Load a file written by `save_checked`; ValueError if truncated or corrupt."""
    import torch

    data = Path(path).read_bytes()
    n = len(_MAGIC) + 32
    if len(data) < n or data[-n:-32] != _MAGIC:
        raise ValueError(f"{path}: no checksum trailer (truncated?)")
    payload, digest = data[:-n], data[-32:]
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError(f"{path}: checksum mismatch (corrupt)")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def partial_dir(final: Path) -> Path:
    """The run's staging folder, named after the run (and so its key): a re-run of the
    same configuration finds its checkpoint here."""
    return final.parent / f".{final.name}.partial"


def publish(staging: Path, final: Path) -> None:
    """Make a run folder appear in one rename (a re-run replaces an older failed one)."""
    if final.exists():
        trash = final.parent / f".{final.name}.old.{os.getpid()}"
        os.replace(final, trash)
        os.replace(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, final)


def lock_path(final: Path) -> Path:
    """The run's lock file; it stays after publishing so that a late process trying the
    same run locks the same file and then finds the run finished."""
    return final.parent / f".{final.name}.lock"


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[bool]:
    """Exclusive, non-blocking lock on a run (flock: released when its process dies, even
    by SIGKILL). Yields False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locking
        yield True
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def is_locked(path: Path) -> bool:
    """Whether a live process holds a run's lock (what `mcbench status` shows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return False
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def run_dirs(results_dir: Path) -> list[Path]:
    runs = Path(results_dir) / "runs"
    if not runs.is_dir():
        return []
    return sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))


def partial_dirs(results_dir: Path) -> list[Path]:
    runs = Path(results_dir) / "runs"
    if not runs.is_dir():
        return []
    return sorted(p for p in runs.glob(".*.partial") if p.is_dir())


def read_config(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "config.json").read_text())


def verify_run(run_dir: Path, files: tuple[str, ...] = CHECKED_FILES) -> dict[str, Any] | None:
    """The run's config if it is complete and `files` match their recorded checksums;
    None for anything truncated, corrupt or unfinished."""
    try:
        cfg = read_config(run_dir)
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict) or not cfg.get("complete"):
        return None
    sums = cfg.get("files", {})
    for name in files:
        try:
            if name not in sums or sha256_file(run_dir / name) != sums[name]:
                return None
        except OSError:
            return None
    return cfg


def collect(results_dir: Path) -> pd.DataFrame:
    """All runs' metric rows with their run name and status, from the run folders.

    A folder whose metrics.csv does not match the checksum in its config.json is left
    out (folders written before checksums existed, without "files", are read as is).
    """
    frames = []
    for d in run_dirs(results_dir):
        try:
            cfg = read_config(d)
            sums = cfg.get("files")
            if sums is not None and sha256_file(d / "metrics.csv") != sums.get("metrics.csv"):
                continue
            df = pd.read_csv(d / "metrics.csv")
        except (OSError, ValueError, AttributeError):
            continue  # a foreign or damaged folder is not a finished run
        df["run"] = d.name
        df["status"] = cfg.get("status", "unknown")
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=[*COLUMNS, "run", "status"])
    return pd.concat(frames, ignore_index=True)


def write_table(results_dir: Path) -> pd.DataFrame:
    """Rebuild RESULTS_DIR/results.csv from the run folders (atomic replace)."""
    df = collect(results_dir)
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    write_csv_atomic(Path(results_dir) / "results.csv", df)
    return df
