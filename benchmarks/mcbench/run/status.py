"""`mcbench status`: where a results folder stands, read from the files alone.

Works while a suite runs (from any machine that sees the folder) and after it was
killed: finished runs come from their verified config.json, runs in progress from the
progress.json and checkpoint in their staging folder, and the run's lock tells a live
run from an interrupted one.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from mcbench.errors import McbenchError
from mcbench.run import store as res


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def status(results_dir: Path) -> dict[str, Any]:
    """Finished, failed, damaged and in-progress runs of a results folder."""
    results_dir = Path(results_dir)
    if not (results_dir / "runs").is_dir():
        raise McbenchError(f"no runs under {results_dir} (expected {results_dir}/runs)")
    from mcbench.run.runner import stale

    out: dict[str, Any] = {"ok": [], "failed": [], "damaged": [], "in_progress": []}
    for d in res.run_dirs(results_dir):
        cfg, why = res.check_run(d)
        if cfg is None:
            out["damaged"].append({"run": d.name, "reason": why})
            continue
        entry = {"run": d.name, "stale": stale(cfg)}
        if cfg.get("status") == "ok":
            out["ok"].append({**entry, "wall_time_s": cfg.get("wall_time_s")})
        else:
            out["failed"].append(
                {**entry, "step": cfg.get("failed_step"), "reason": cfg.get("reason")}
            )
    for p in res.partial_dirs(results_dir):
        name = p.name[1 : -len(".partial")]
        entry: dict[str, Any] = {"run": name, "step": 0, "steps": None, "metrics": {}}
        with contextlib.suppress(OSError, ValueError):
            entry.update(json.loads((p / res.PROGRESS).read_text()))
        entry["running"] = res.is_locked(res.lock_path(p.parent / name))
        # a group's checkpoint lives in its first run's folder: every member resumes there
        held = entry.get("checkpoint_file") or f"{p.name}/{res.CHECKPOINT}"
        entry["checkpoint"] = (p.parent / held).exists()
        out["in_progress"].append(entry)
    return out


def format_status(st: dict[str, Any]) -> str:
    now = time.time()
    lines = [
        f"finished: {len(st['ok'])} ok, {len(st['failed'])} failed; "
        f"in progress: {sum(e['running'] for e in st['in_progress'])} running, "
        f"{sum(not e['running'] for e in st['in_progress'])} interrupted; "
        f"damaged: {len(st['damaged'])}"
    ]
    for e in st["in_progress"]:
        state = "running" if e["running"] else "interrupted"
        steps = f"{e['step']}/{e['steps']}" if e.get("steps") else "starting"
        shown = " ".join(f"{k}={v:.4g}" for k, v in e.get("metrics", {}).items())
        seen = f", updated {_age(now - e['updated'])} ago" if "updated" in e else ""
        where = f" on {e['host']}:{e['pid']}" if "host" in e else ""
        if not e["running"]:
            where += f", resumes from step {e.get('checkpoint_step', 0) if e['checkpoint'] else 0}"
        lines.append(f"  {state:<11} {e['run']}  step {steps}{where}{seen}  {shown}".rstrip())
    for e in st["failed"]:
        lines.append(f"  failed      {e['run']}  at step {e['step']}: {e['reason']}")
    for e in st["damaged"]:
        why = f": {e['reason']}" if e.get("reason") else ""
        lines.append(f"  damaged     {e['run']}{why} (redone on the next `mcbench run`)")
    for e in [*st["ok"], *st["failed"]]:
        if e.get("stale"):
            lines.append(f"  stale       {e['run']}: {e['stale']} (redone by `mcbench run`)")
    return "\n".join(lines)
