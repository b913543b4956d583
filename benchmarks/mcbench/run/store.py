"""Results on disk: one folder per run, written atomically, and one table per suite.

Layout of a results directory::

    RESULTS_DIR/
      results.csv                 all runs' metric rows (pandas reads it in one line);
                                  rebuilt by the parent process only
      runs/<method>-<dataset>-s<seed>-<key>/
        config.json               the run's full configuration, status, environment, the
                                  code that produced it, the sha256 of its other files and
                                  a checksum of itself (written last)
        metrics.csv               tidy rows: method,dataset,seed,step,metric,value,wall_time
        generator.pt              the final generator's state_dict
      runs/.<run name>.partial/   a run in progress, trained by one process at a time
        checkpoint.pt             last checkpoint (payload + sha256 trailer)
        progress.json             step, latest metrics, host and pid
      runs/.<run name>.lock       held (an OS file lock) by the process training the run

Every file is written to a temporary name and renamed into place, so a reader sees the
old file or the new one, never half of one; a file that fails its checksum anyway (a
truncated copy, a damaged disk, an edit by hand) makes the run count as damaged, so it
is never reported and is redone (`check_run` says which file).
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
from filelock import FileLock, Timeout

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
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # an unwritable place: leave no temporary file behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


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
        try:
            os.replace(staging, final)
        except BaseException:  # put the old folder back rather than lose both
            with contextlib.suppress(OSError):
                os.replace(trash, final)
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, final)


def lock_path(final: Path) -> Path:
    """The run's lock file; it stays after publishing so that a late process trying the
    same run locks the same file and then finds the run finished."""
    return final.parent / f".{final.name}.lock"


@contextlib.contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """Exclusive, non-blocking lock on `path`: yields whether we got it (False when another
    process, or another lock in this one, holds it). An OS lock through `filelock`
    (flock on Unix), so it is released when its holder dies, even by SIGKILL; the file
    stays, so that every later process locks the same file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(blocking=False)
        got = True
    except Timeout:
        got = False
    try:
        yield got
    finally:
        if got:
            lock.release()


def run_lock(path: Path) -> contextlib.AbstractContextManager[bool]:
    """The lock of a run (at `lock_path`): the process that gets it trains the run."""
    return try_lock(path)


def is_locked(path: Path) -> bool:
    """Whether a live process holds a run's lock (what `mcbench status` shows): a
    try-lock, released at once; a missing or unreadable lock file is nobody's."""
    if not path.exists():
        return False
    try:
        with try_lock(path) as got:
            return not got
    except OSError:
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


def config_checksum(cfg: dict[str, Any]) -> str:
    """sha256 of a run's config.json content minus the checksum itself: with the files'
    sha256 inside it, it covers everything that defines and records the run."""
    body = {k: v for k, v in cfg.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def check_run(
    run_dir: Path, files: tuple[str, ...] = CHECKED_FILES
) -> tuple[dict[str, Any] | None, str | None]:
    """(config, None) for a complete run whose config and `files` match their checksums;
    (None, why) otherwise, naming the file at fault. Runs written before config checksums
    existed (the committed reference runs) have no "checksum" and are checked by files."""
    try:
        cfg = read_config(run_dir)
    except OSError as exc:
        return None, f"config.json unreadable ({exc.strerror or exc})"
    except ValueError:
        return None, "config.json is not valid JSON"
    if not isinstance(cfg, dict):
        return None, "config.json is not a run's configuration"
    if "checksum" in cfg and cfg["checksum"] != config_checksum(cfg):
        return None, "config.json was changed after the run finished (checksum mismatch)"
    if not cfg.get("complete"):
        return None, "config.json is not marked complete (unfinished or edited)"
    sums = cfg.get("files", {})
    if not isinstance(sums, dict):
        return None, "config.json has no file checksums"
    for name in files:
        if name not in sums:
            return None, f"config.json records no checksum of {name}"
        try:
            if sha256_file(run_dir / name) != sums[name]:
                return None, f"{name} fails its checksum (changed or truncated)"
        except OSError as exc:
            return None, f"{name} unreadable ({exc.strerror or exc})"
    return cfg, None


def verify_run(run_dir: Path, files: tuple[str, ...] = CHECKED_FILES) -> dict[str, Any] | None:
    """The run's config if it is complete and its config and `files` match their
    checksums; None for anything truncated, corrupt, edited or unfinished."""
    return check_run(run_dir, files)[0]


def collect(results_dir: Path) -> pd.DataFrame:
    """All runs' metric rows with their run name and status, from the run folders.

    A folder that fails `check_run` is left out (folders written before checksums
    existed, without "files", are read as is).
    """
    frames = []
    for d in run_dirs(results_dir):
        try:
            cfg = read_config(d)
            if "files" in cfg and check_run(d)[0] is None:
                continue  # damaged or edited: never a valid result
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
