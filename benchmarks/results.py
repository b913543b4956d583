"""Results on disk: one folder per run, written atomically, and one table per suite.

Layout of a results directory::

    RESULTS_DIR/
      results.csv                 all runs' metric rows (pandas reads it in one line)
      runs/<method>-<dataset>-s<seed>-<key>/
        config.json               the run's full configuration, status and environment
        metrics.csv               tidy rows: method,dataset,seed,step,metric,value,wall_time
        generator.pt              the final generator's state_dict
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = ["method", "dataset", "seed", "step", "metric", "value", "wall_time"]


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def write_csv_atomic(path: Path, df: pd.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def staging_dir(final: Path) -> Path:
    """A private folder beside `final`; `publish` renames it into place in one step."""
    final.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    path.chmod(0o755)
    return path


def publish(staging: Path, final: Path) -> None:
    """Make a run folder appear atomically (a re-run replaces an older failed one)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)


def run_dirs(results_dir: Path) -> list[Path]:
    runs = Path(results_dir) / "runs"
    if not runs.is_dir():
        return []
    return sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_config(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "config.json").read_text())


def collect(results_dir: Path) -> pd.DataFrame:
    """All runs' metric rows with their run name and status, from the run folders."""
    frames = []
    for d in run_dirs(results_dir):
        try:
            cfg = read_config(d)
            df = pd.read_csv(d / "metrics.csv")
        except (OSError, ValueError):
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
