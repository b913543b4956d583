"""Suites: named grids of runs in TOML, and their execution (serial or with joblib).

A suite file holds ``methods`` (a list of selectors, or "all"), ``datasets``, ``seeds``,
the budget (``steps``, ``eval_every``, ``eval_samples``), optional ``exclude`` (method
names left out of "all"), ``[params.<method>]`` hyperparameter overrides and
``[budget.<dataset>]`` budget overrides.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from mcbench import results as res
from mcbench.datasets import get_dataset
from mcbench.errors import McbenchError
from mcbench.registry import methods, parse_selector, resolve
from mcbench.runner import RunSpec, default_device, run

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUDGET_KEYS = ("steps", "eval_every", "eval_samples")
SUITE_KEYS = {
    "description",
    "methods",
    "datasets",
    "seeds",
    "exclude",
    "params",
    "budget",
    *BUDGET_KEYS,
}


@dataclass
class Suite:
    name: str
    description: str
    specs: list[RunSpec]


def suite_names() -> list[str]:
    files = resources.files("mcbench.suites")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def _read(name_or_path: str) -> tuple[str, dict[str, Any]]:
    path = Path(name_or_path)
    if name_or_path.endswith(".toml"):
        if not path.is_file():
            raise McbenchError(f"suite file {name_or_path} does not exist")
        text, name = path.read_text(), path.stem
    elif name_or_path in suite_names():
        text = resources.files("mcbench.suites").joinpath(f"{name_or_path}.toml").read_text()
        name = name_or_path
    else:
        raise McbenchError(
            f"unknown suite {name_or_path!r}; choices: {', '.join(suite_names())} "
            "(or a path to a .toml file)"
        )
    try:
        return name, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise McbenchError(f"suite {name_or_path}: malformed TOML: {exc}") from None


def _positive_int(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise McbenchError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def load_suite(name_or_path: str, overrides: dict[str, Any] | None = None) -> Suite:
    """Read and validate a suite file (with command-line overrides)."""
    name, raw = _read(name_or_path)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build_suite(name, raw)


def build_suite(name: str, raw: dict[str, Any]) -> Suite:
    """Expand a suite's grid; every run's method, dataset and config is checked here,
    before any work starts."""
    unknown = set(raw) - SUITE_KEYS
    if unknown:
        raise McbenchError(
            f"suite {name}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(sorted(SUITE_KEYS))}"
        )
    for key in ("methods", "datasets", "seeds", *BUDGET_KEYS):
        if key not in raw:
            raise McbenchError(f"suite {name}: missing key {key!r}")
    selected = raw["methods"]
    exclude = set(raw.get("exclude", []))
    if selected == "all":
        selected = [m for m in methods() if m not in exclude]
    if not isinstance(selected, list) or not all(isinstance(m, str) for m in selected):
        raise McbenchError(f'suite {name}: methods must be a list of names or "all"')
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds
    ):
        raise McbenchError(f"suite {name}: seeds must be a list of non-negative integers")
    params: dict[str, dict] = raw.get("params", {})
    budgets: dict[str, dict] = raw.get("budget", {})
    specs = []
    for dataset in raw["datasets"]:
        get_dataset(dataset)
        budget = {k: raw[k] for k in BUDGET_KEYS} | budgets.get(dataset, {})
        for k in BUDGET_KEYS:
            _positive_int(f"suite {name}", k, budget.get(k))
        for selector in selected:
            base, _ = parse_selector(selector)
            extra = params.get(base, {})
            resolve(selector, extra)  # validates name and hyperparameters now
            for seed in seeds:
                specs.append(
                    RunSpec(
                        selector,
                        dataset,
                        seed,
                        budget["steps"],
                        budget["eval_every"],
                        budget["eval_samples"],
                        extra,
                    )
                )
    return Suite(name, raw.get("description", ""), specs)


def _worker(spec: RunSpec, results_dir: str, device: str, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    cfg = run(spec, Path(results_dir), torch.device(device))
    return {k: cfg.get(k) for k in ("run", "status", "reason", "skipped", "wall_time_s")}


def run_specs(
    specs: Iterable[RunSpec],
    results_dir: Path,
    jobs: int = 1,
    device: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every spec (skipping finished ones); rebuild the suite table as runs land."""
    from tqdm import tqdm

    specs = list(specs)
    dev = device or str(default_device())
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    bar = tqdm(total=len(specs), disable=not progress, unit="run", desc="mcbench")
    done: list[dict[str, Any]] = []

    def land(out: dict[str, Any]) -> None:
        done.append(out)
        res.write_table(results_dir)
        failed = sum(d["status"] != "ok" for d in done)
        bar.set_postfix(failed=failed, last=out["run"][:40])
        bar.update(1)

    if jobs <= 1:
        for spec in specs:
            land(_worker(spec, str(results_dir), dev, torch.get_num_threads()))
    else:
        from joblib import Parallel, delayed

        pool = Parallel(n_jobs=jobs, return_as="generator_unordered")
        for out in pool(delayed(_worker)(s, str(results_dir), dev, threads) for s in specs):
            land(out)
    bar.close()
    res.write_table(results_dir)
    return done
