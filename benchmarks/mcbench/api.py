"""Python interface for notebooks: the command line's parts, called as functions.

``run`` trains a grid exactly as ``mcbench run -m ... -d ...`` does (the same suite
expansion, checks, results folder and skipping of finished runs) and returns the tidy
metric rows; ``load`` reads results as ``mcbench report`` does; ``evaluate`` scores any
samples as ``mcbench evaluate``; ``final``, ``summary`` and ``table`` are the report's
statistics; ``plot`` draws the report's curves (mean over seeds, +-1 std band) into one
matplotlib Axes. Mistakes raise McbenchError with a one-line message.

    >>> from mcbench import api
    >>> df = api.run(["gan", "pacgan2"], "ring", seeds=[0, 1], steps=200, eval_samples=1000)
    >>> print(api.table(df))
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mcbench.errors import McbenchError
from mcbench.report import build as _build

if TYPE_CHECKING:
    import torch
    from matplotlib.axes import Axes

# Where `run` writes when `out` is not given: a folder that outlives the session (unlike a
# temporary one), so re-running a notebook cell skips the runs already finished.
DEFAULT_OUT = Path("results/notebook")
# The command line's defaults for `mcbench run -m ... -d ...`.
DEFAULT_STEPS = 2000
DEFAULT_EVAL_SAMPLES = 100_000
MAX_EVAL_EVERY = 500
# Suite keys that `run(**options)` passes into the grid (see mcbench.run.suite).
SUITE_OPTIONS = (
    "params",
    "budget",
    "exclude",
    "checkpoint_every",
    "description",
    "regularizers",
)

__all__ = [
    "DEFAULT_OUT",
    "evaluate",
    "final",
    "load",
    "plot",
    "run",
    "summary",
    "table",
]


def _names(what: str, value: str | Iterable[str]) -> list[str]:
    """One name or several (a notebook passes "ring" as often as ["ring"])."""
    if isinstance(value, str):
        return [value]
    try:
        names = list(value)
    except TypeError:
        raise McbenchError(f"{what} must be a name or a list of names, got {value!r}") from None
    if not all(isinstance(n, str) for n in names):
        raise McbenchError(f"{what} must be a name or a list of names, got {names!r}")
    return names


def _ints(value: Any) -> Any:
    """numpy integers as ints (suite checks want int); anything else left for them."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def _run_options() -> set[str]:
    from mcbench.run.suite import run_specs

    params = inspect.signature(run_specs).parameters
    skip = {"specs", "results_dir", "jobs", "device", "replicas"}  # run()'s own arguments
    return {n for n in params if n not in skip}


def run(
    methods: str | Sequence[str],
    datasets: str | Sequence[str],
    seeds: int | Iterable[int] = (0,),
    steps: int = DEFAULT_STEPS,
    eval_every: int | None = None,
    eval_samples: int = DEFAULT_EVAL_SAMPLES,
    out: str | Path | None = None,
    jobs: int | None = 1,
    replicas: int | None = None,
    device: str | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Train methods x datasets x seeds as ``mcbench run -m ... -d ...`` and return the
    tidy metric rows of those runs (the columns of results.csv, plus ``run`` and
    ``status``; failed runs are kept with status "failed").

    `methods` are selectors (``"pacgan[m=3]"``); `eval_every` defaults to
    min(500, steps). Results go to `out` (default ``results/notebook`` under the working
    directory); runs already finished there are read, not trained again. `jobs`: worker
    processes (None: one per CPU core, as the CLI). `options`: the suite keys
    ``params`` ({method: {hyperparameter: value}}), ``budget``, ``exclude``,
    ``checkpoint_every``, and run_specs' keywords (``progress``, ``threads``,
    ``retry_failed``, ``verbose``, ``graphs``, ``scheduler``).
    """
    from mcbench.run.suite import build_suite, default_jobs, run_specs

    run_keys = _run_options()
    unknown = set(options) - set(SUITE_OPTIONS) - run_keys
    if unknown:
        raise McbenchError(
            f"run() got unknown option(s) {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(sorted({*SUITE_OPTIONS, *run_keys}))}"
        )
    steps = _ints(steps)
    if eval_every is None and isinstance(steps, int):
        eval_every = min(MAX_EVAL_EVERY, steps)
    seed_list = [seeds] if isinstance(seeds, numbers.Integral) else list(seeds)
    raw: dict[str, Any] = {
        "methods": _names("methods", methods),
        "datasets": _names("datasets", datasets),
        "seeds": [_ints(s) for s in seed_list],
        "steps": steps,
        "eval_every": _ints(eval_every),
        "eval_samples": _ints(eval_samples),
        **{k: options.pop(k) for k in SUITE_OPTIONS if k in options},
    }
    suite = build_suite("notebook", raw)  # every name, budget and hyperparameter checked here
    results_dir = Path(DEFAULT_OUT if out is None else out)
    if results_dir.exists() and not results_dir.is_dir():
        raise McbenchError(f"out={str(results_dir)!r} exists and is not a folder")
    for name, value in (("jobs", jobs), ("replicas", replicas)):
        value = _ints(value)
        if value is not None and (type(value) is not int or value < 1):
            raise McbenchError(f"{name} must be a positive integer or None, got {value!r}")
    options.setdefault("checkpoint_every", suite.checkpoint_every)
    outcomes = run_specs(
        suite.specs,
        results_dir,
        jobs=int(jobs) if jobs is not None else default_jobs(device, options.get("scheduler")),
        device=device,
        replicas=int(replicas) if replicas is not None else suite.replicas,
        **options,
    )
    errors = [o for o in outcomes if o["status"] == "error"]
    if errors:
        reason = " ".join(str(errors[0].get("reason")).split())  # one line
        raise McbenchError(
            f"{len(errors)} of {len(outcomes)} run(s) could not run "
            f"(first: {errors[0]['run']}: {reason}); run again to retry "
            f"them, or read the others with load({str(results_dir)!r})"
        )
    busy = [o["run"] for o in outcomes if o["status"] == "busy"]
    if busy:
        warnings.warn(
            f"{len(busy)} run(s) are being trained by another process and are not in the "
            f"result (first: {busy[0]})",
            stacklevel=2,
        )
    names = {s.run_name() for s in suite.specs}
    rows = load(results_dir)
    rows = rows[rows["run"].isin(names)].reset_index(drop=True)
    rows.attrs["results_dir"] = str(results_dir)
    return rows


def load(*paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Tidy metric rows of results folders (results.csv and/or runs/), run folders, or
    folders of those, merged as ``mcbench report`` merges them (a run found twice is read
    once). Unfinished or damaged runs are left out with a warning."""
    flat: list[str | Path] = []
    for p in paths:
        flat.extend([p] if isinstance(p, (str, Path)) else list(p))
    if not flat:
        raise McbenchError("load() needs at least one results or run folder")
    results = _build.load_results(flat)
    for note in results.notes:
        warnings.warn(note, stacklevel=2)
    return results.rows


def evaluate(
    dataset: str, samples: np.ndarray | torch.Tensor | Sequence[Any] | str | Path
) -> dict[str, float]:
    """The dataset's metrics of `samples` (an array or tensor, or a .npy/.npz/.csv file),
    with ``mcbench evaluate``'s checks: a wrong shape or NaN is a McbenchError."""
    import torch

    from mcbench.cli import read_samples
    from mcbench.datasets import get_dataset

    ds = get_dataset(dataset)
    if isinstance(samples, (str, Path)):
        samples = read_samples(str(samples))
    elif not torch.is_tensor(samples):
        try:
            samples = np.asarray(samples)
        except ValueError as exc:  # ragged nested lists
            raise McbenchError(f"samples are not an array: {exc}") from None
        if samples.dtype.kind not in "biuf":
            raise McbenchError(f"samples must be numbers, got dtype {samples.dtype}")
    return {k: float(v) for k, v in ds.evaluate(samples).items()}


def final(df: pd.DataFrame) -> pd.DataFrame:
    """Each run's rows at its last evaluated step (failed runs included: see ``status``)."""
    _need(df, ("run", "step"))
    return _build.final_metrics(df).reset_index(drop=True)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Final metrics over seeds, one row per (method, dataset, metric): mean, std, sem,
    n, runs, failed and best, as the report's tables (failed runs only counted)."""
    _need(df, ("run", "method", "dataset", "seed", "status", "step", "metric", "value"))
    return _build.aggregate(df).reset_index(drop=True)


def table(df: pd.DataFrame, error: str = "std") -> str:
    """The final-metrics table of each dataset in Markdown, as ``mcbench run`` prints it."""
    report = _build
    if error not in report.ERROR_MODES:
        raise McbenchError(f"error must be one of {', '.join(report.ERROR_MODES)}, got {error!r}")
    _need(df, ("run", "method", "dataset", "seed", "status", "step", "metric", "value"))
    return report.markdown(df, error)


def _need(df: pd.DataFrame, columns: Iterable[str]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise McbenchError(f"expected the DataFrame of run() or load(), got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise McbenchError(
            f"the DataFrame lacks column(s) {', '.join(missing)}; pass what run() or load() returns"
        )


def plot(
    df: pd.DataFrame,
    metric: str = "modes_covered",
    x: str = "step",
    ax: Axes | None = None,
    dataset: str | None = None,
) -> Axes:
    """One panel of the report's curves figure: `metric` against `x` ("step" or
    "wall_time") on one dataset, a line per method (mean over seeds, ok runs only) with
    a +-1 std band, on the metric's declared scale (log for the KLs). Draws into `ax`
    (default: a new figure); returns the Axes (``ax.figure.savefig(...)`` saves it)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from mcbench.report.naming import label, sort_methods, spec_of

    _need(df, ("method", "dataset", "step", "metric", "value", x))
    if x not in ("step", "wall_time"):
        raise McbenchError(f'x must be "step" or "wall_time", got {x!r}')
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    present = sorted(ok["dataset"].unique())
    if dataset is None:
        if len(present) != 1:
            raise McbenchError(
                f"the results hold datasets {', '.join(present) or '(none)'}: pass dataset="
            )
        dataset = present[0]
    part = ok[(ok["dataset"] == dataset) & (ok["metric"] == metric)]
    if part.empty:
        have = sorted(ok.loc[ok["dataset"] == dataset, "metric"].unique())
        raise McbenchError(
            f"no ok rows of metric {metric!r} on dataset {dataset!r}; "
            f"metrics there: {', '.join(have) or '(none)'}"
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.2), layout="constrained")
    methods = sort_methods(part["method"])
    colors = sns.color_palette("tab10" if len(methods) <= 10 else "husl", len(methods))
    for method, color in zip(methods, colors, strict=True):
        g = part[part["method"] == method].groupby("step")  # seeds meet at each evaluation
        band = pd.DataFrame(
            {"x": g[x].mean(), "mean": g["value"].mean(), "std": g["value"].std().fillna(0.0)}
        ).sort_values("x")
        marker = "o" if len(band) == 1 else None  # a single evaluation: a dot, not nothing
        ax.plot(band["x"], band["mean"], color=color, lw=1.3, marker=marker, label=method)
        ax.fill_between(
            band["x"],
            band["mean"] - band["std"],
            band["mean"] + band["std"],
            color=color,
            alpha=0.18,
            lw=0,
        )
    values = part["value"].to_numpy(float)
    finite = values[np.isfinite(values)]
    if spec_of(metric).scale == "log" and len(finite) and (finite > 0).all():
        ax.set_yscale("log")  # the metric's declared scale, as in the report's figures
    ax.set_title(f"{dataset}: {label(metric)}", fontsize=9)
    ax.set_xlabel("generator updates" if x == "step" else "training time (s)")
    ax.set_ylabel(spec_of(metric).unit)
    ax.legend(fontsize=8, frameon=False)
    return ax
