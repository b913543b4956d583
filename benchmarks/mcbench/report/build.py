"""Reports: the papers' tables and figures from any results folder, with no re-training.

`mcbench report DIR [DIR ...]` reads one run folder, a suite's results folder
(``results.csv`` and/or ``runs/``), or a folder of such folders, merges them, and writes
``report.md``, a self-contained ``report.html``, ``tables/`` (Markdown, LaTeX, CSV) and
``figures/`` (PNG, PDF). Statistics are over seeds of the same method selector and
dataset; a run that failed counts in "failed" and never in the statistics. A best mean
is bold only where a one-sided Welch t-test over seeds says it beats the runner-up at
level 0.05 (ALPHA); the CSVs carry t-based 95% confidence intervals. A published number
is put beside ours only under the same metric (definition) and number of samples N.
Which way each metric is better, its label, column order, plot scale and any N fixed by
its definition are its declaration's (mcbench.metrics.registry), read through
mcbench.report.naming.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from importlib import resources
from io import StringIO
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import seaborn
import torch
from scipy.stats import t as stats_t
from scipy.stats import ttest_ind

import mcbench
from mcbench.errors import McbenchError
from mcbench.plugin.registry import parse_selector
from mcbench.plugin.regularizers import Regularizers
from mcbench.report import figures as figs
from mcbench.report.document import Cell, Document, Figure, Table, cells, frame_table
from mcbench.report.naming import (
    arrow,
    dataset_order,
    direction,
    label,
    plugin_error,
    sort_methods,
    spec_of,
    table_metrics,
    undeclared,
)
from mcbench.report.options import DENSITY_SAMPLES, Options
from mcbench.report.options import ERROR_MODES as ERROR_MODES  # re-exported (mcbench.api)
from mcbench.run import store as res

# Paper layouts: which metrics a published table shows, in its order. Directions and
# labels still come from the metrics' declarations.
# VEEGAN/PacGAN Table 1 layout: each column their definition (on 2,500 samples), or ours
# (LBT's rules) where a results folder predates it.
MIXTURE_LAYOUT = (
    ("modes_covered_any", "modes_covered"),
    ("high_quality_pct_2500", "high_quality_pct"),
    ("reverse_kl_2500", "reverse_kl"),
)
MIXTURE_CORE = ("modes_covered", "high_quality_pct", "reverse_kl")  # what marks a mixture
TABLE1_LAYOUT = {"Modes": "modes_covered", "KL": "reverse_kl"}  # LBT Table 1 (Stacked MNIST)
ALPHA = 0.05  # level of the significance test behind a bold (best) cell


# -- loading ------------------------------------------------------------------------


@dataclass
class Results:
    """Tidy metric rows of every run, one row per run, and each run's config.json."""

    rows: pd.DataFrame
    runs: pd.DataFrame
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _is_results(p: Path) -> bool:
    return (p / "runs").is_dir() or (p / "results.csv").is_file()


def _is_run(p: Path) -> bool:
    return (p / "config.json").is_file() and (p / "metrics.csv").is_file()


# What every run's config.json and every metrics.csv / results.csv row holds; a file
# without them is not mcbench's, and reading it anyway fails deep inside the tables.
RUN_KEYS = ("method", "dataset", "seed")
METRIC_COLUMNS = ("method", "dataset", "seed", "step", "metric", "value")
NUMERIC_COLUMNS = ("seed", "step", "value")


def _not_metrics(df: pd.DataFrame) -> str | None:
    """Why `df` is not mcbench metric rows (None: it is)."""
    missing = [c for c in METRIC_COLUMNS if c not in df.columns]
    if len(missing) == len(METRIC_COLUMNS):
        return f"none of the columns {', '.join(METRIC_COLUMNS)}"
    if missing:
        return f"no column(s) {', '.join(missing)} (expected {', '.join(METRIC_COLUMNS)})"
    bad = [c for c in NUMERIC_COLUMNS if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        return f"non-numeric column(s) {', '.join(bad)}"
    return None


def _not_a_run(cfg: dict[str, Any], df: pd.DataFrame) -> str | None:
    """Why a folder with config.json and metrics.csv is not an mcbench run (None: it is)."""
    missing = [k for k in RUN_KEYS if k not in cfg]
    if missing:
        return f"config.json has no {', '.join(missing)}: not an mcbench run's config"
    why = _not_metrics(df)
    return f"metrics.csv: {why}" if why else None


def find_sources(paths: list[Path | str]) -> list[Path]:
    """Results folders and run folders named by `paths` (or one level below them)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.exists() and not p.is_dir():
            raise McbenchError(
                f"{p} is a file: expected a results folder (results.csv, runs/, a run "
                "folder, or a folder of those)"
            )
        if not p.is_dir():
            raise McbenchError(f"results folder {p} does not exist")
        if _is_results(p) or _is_run(p):
            found.append(p)
            continue
        subs = [s for s in sorted(p.iterdir()) if s.is_dir() and (_is_results(s) or _is_run(s))]
        if not subs:
            raise McbenchError(
                f"no results under {p}: expected results.csv, runs/ or a run folder "
                "(config.json and metrics.csv)"
            )
        found.extend(subs)
    return found


def _run_record(name: str, cfg: dict[str, Any], rows: pd.DataFrame, d: Path | None) -> dict:
    budget = cfg.get("budget", {})
    info = cfg.get("dataset_info", {})
    steps = budget.get("steps")
    if steps is None and len(rows):
        steps = int(rows["step"].max())
    return {
        "run": name,
        "selector": cfg.get("method", rows["method"].iloc[0] if len(rows) else ""),
        "dataset": cfg.get("dataset", rows["dataset"].iloc[0] if len(rows) else ""),
        "seed": cfg.get("seed", rows["seed"].iloc[0] if len(rows) else -1),
        "status": cfg.get(
            "status", rows["status"].iloc[0] if "status" in rows and len(rows) else "ok"
        ),
        "reason": cfg.get("reason") or "",
        "failed_step": cfg.get("failed_step"),
        "steps": steps,
        "family": info.get("family", ""),
        "protocol": cfg.get("protocol", {}).get("name", "common"),
        "regularizers": _regularizers(cfg),
        "compiled": bool(cfg.get("compiled", False)),
        "dir": str(d) if d else "",
    }


def _regularizers(cfg: dict[str, Any]) -> str:
    """The run's harness options (instance noise, TTUR rates) in words; "none" if unset."""
    try:
        return Regularizers.from_options(cfg.get("regularizers") or {}).describe()
    except McbenchError:
        return "unreadable"


def _read_run(d: Path) -> tuple[dict, pd.DataFrame] | str:
    """A run folder's config and rows, or why it is damaged (never reported as valid):
    a run that records checksums must pass them all (`store.check_run`: config, metrics,
    generator, complete); folders from before checksums (no "files") are read as is."""
    try:
        cfg = res.read_config(d)
        if not isinstance(cfg, dict):
            return "config.json is not a run's configuration"
        if "files" in cfg or "checksum" in cfg or "complete" in cfg:
            why = res.check_run(d)[1]
            if why is not None:
                return why
        df = pd.read_csv(d / "metrics.csv")
    except (OSError, ValueError, AttributeError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    df["run"] = d.name
    df["status"] = cfg.get("status", "unknown")
    return cfg, df


def load_results(paths: list[Path | str]) -> Results:
    """Merge the runs of every source; a run found twice (same name = same config
    hash) is read once, from the first source that has it."""
    sources = find_sources(paths)
    frames: list[pd.DataFrame] = []
    records: list[dict] = []
    configs: dict[str, dict] = {}
    notes: list[str] = []
    for src in sources:
        run_folders = [src] if _is_run(src) else res.run_dirs(src)
        partial = [] if _is_run(src) else res.partial_dirs(src)
        if partial:
            notes.append(
                f"{len(partial)} unfinished run(s) under {src}/runs (in progress or "
                "interrupted) are not in this report"
            )
        # results.csv never resurrects a run whose folder is here but unreadable
        seen_here = {d.name for d in run_folders}
        for d in run_folders:
            got = _read_run(d)
            if isinstance(got, str):
                notes.append(f"damaged run {d}, not in this report: {got}")
                continue
            cfg, df = got
            foreign = _not_a_run(cfg, df)
            if foreign:
                notes.append(f"skipped {d}: {foreign}")
                continue
            if d.name in configs:
                continue
            configs[d.name] = cfg
            frames.append(df)
            records.append(_run_record(d.name, cfg, df, d))
        csv = src / "results.csv"
        if csv.is_file() and not _is_run(src):
            try:
                table = pd.read_csv(csv)
            except (OSError, ValueError) as exc:  # pandas' parser errors are ValueErrors
                raise McbenchError(f"cannot read {csv} as CSV ({type(exc).__name__})") from None
            foreign = _not_metrics(table)
            if foreign:
                raise McbenchError(f"{csv} is not an mcbench results.csv: {foreign}")
            if "run" not in table.columns:
                table["run"] = (
                    table["method"] + "-" + table["dataset"] + "-s" + table["seed"].astype(str)
                )
            if "status" not in table.columns:
                table["status"] = "ok"
            for name, df in table.groupby("run", sort=True):
                if name in seen_here or name in configs:
                    continue
                configs[name] = {}
                frames.append(df)
                records.append(_run_record(name, {}, df, None))
    if not records:  # say why the runs that are there were left out
        why = f" ({notes[0]}" + (f"; {len(notes) - 1} more" if len(notes) > 1 else "") + ")"
        raise McbenchError(
            f"no finished runs under {', '.join(map(str, sources))}" + (why if notes else "")
        )
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    runs = pd.DataFrame(records)
    _label_methods(rows, runs)
    return Results(rows=rows, runs=runs, configs=configs, sources=sources, notes=notes)


def _label_methods(rows: pd.DataFrame, runs: pd.DataFrame) -> None:
    """`method` = the selector, with the protocol profile appended where one selector was
    run on one dataset under several (``gan [pacgan]``, side by side), the harness
    options where set (``gan [noise 0.1 linear/1000]``), ``[compiled]`` on compiled runs
    where eager runs of the same configuration sit beside them (``--compile``: equal to
    rounding, still other runs), and the budget where with different numbers of steps
    (merged suites): never average those."""
    runs["method"] = runs["selector"]
    if "protocol" not in runs:  # records from before profiles
        runs["protocol"] = "common"
    n_protocols = runs.groupby(["selector", "dataset"])["protocol"].transform("nunique")
    several = n_protocols > 1
    runs.loc[several, "method"] = runs.loc[several].apply(
        lambda r: f"{r['selector']} [{r['protocol']}]", axis=1
    )
    if "regularizers" not in runs:
        runs["regularizers"] = "none"
    regularized = runs["regularizers"] != "none"  # never averaged with plain runs
    runs.loc[regularized, "method"] = runs.loc[regularized].apply(
        lambda r: f"{r['method']} [{r['regularizers']}]", axis=1
    )
    if "compiled" not in runs:
        runs["compiled"] = False
    n_modes = runs.groupby(["selector", "dataset", "protocol"])["compiled"].transform("nunique")
    both = (n_modes > 1) & runs["compiled"].astype(bool)  # never averaged with eager runs
    runs.loc[both, "method"] = runs.loc[both, "method"] + " [compiled]"
    n_budgets = runs.groupby(["selector", "dataset", "protocol"])["steps"].transform("nunique")
    mixed = n_budgets > 1
    runs.loc[mixed, "method"] = runs.loc[mixed].apply(
        lambda r: f"{r['method']} ({int(r['steps'])} steps)", axis=1
    )
    if len(rows):
        rows["method"] = rows["run"].map(runs.set_index("run")["method"])


def load(results_dir: Path) -> pd.DataFrame:
    """All metric rows of a results folder (first version's entry point, kept)."""
    return load_results([results_dir]).rows


# -- statistics ---------------------------------------------------------------------


def final_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """Each run's metrics at its last evaluated step."""
    last = df.groupby("run")["step"].transform("max")
    return df[df["step"] == last]


def runs_of(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.groupby("run")[["method", "dataset", "seed", "status"]].first().reset_index()


def aggregate(rows: pd.DataFrame, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Final metrics over seeds, one row per (method, dataset, metric): mean, std
    (ddof 1), sem = std / sqrt(n), the t-based 95% confidence interval of the mean
    (ci95_low, ci95_high; n >= 2), n (ok runs with a finite value), runs, failed, and
    `best` with its `p_value`: the best mean, where a one-sided Welch t-test over seeds
    (`welch_p`) says it beats the runner-up's at level ALPHA.
    A (method, dataset) whose runs all failed keeps a row with metric "" and n = 0."""
    runs = runs_of(rows) if runs is None else runs
    counts = runs.groupby(["method", "dataset"]).agg(
        runs=("run", "size"), failed=("status", lambda s: int((s != "ok").sum()))
    )
    ok = rows[rows["status"] == "ok"]
    fin = final_metrics(ok) if len(ok) else ok
    fin = fin[np.isfinite(fin["value"].astype(float))]
    keys = ["method", "dataset", "metric"]
    stats = fin.groupby(keys)["value"].agg(mean="mean", std="std", n="count").reset_index()
    stats["sem"] = stats["std"] / np.sqrt(stats["n"])
    half = _t_quantile(stats["n"]) * stats["sem"]
    stats["ci95_low"], stats["ci95_high"] = stats["mean"] - half, stats["mean"] + half
    out = stats.merge(counts.reset_index(), on=["method", "dataset"], how="right")
    out["metric"] = out["metric"].fillna("")
    out["n"] = out["n"].fillna(0).astype(int)
    out["direction"] = out["metric"].map(lambda m: direction(m) if m else "")
    values = {k: g.to_numpy(float) for k, g in fin.groupby(keys)["value"]}
    out["best"], out["p_value"] = False, np.nan
    for (dataset, metric), g in out.groupby(["dataset", "metric"]):
        better = direction(metric) if metric else ""
        g = g[g["n"] > 0]
        if not better or g["method"].nunique() < 2:
            continue
        ranked = g.sort_values("mean", ascending=better == "lower", kind="stable")
        first, second = ranked.index[0], ranked.index[1]
        p = welch_p(
            values[(out.at[first, "method"], dataset, metric)],
            values[(out.at[second, "method"], dataset, metric)],
            better,
        )
        out.at[first, "p_value"] = p
        out.at[first, "best"] = bool(p < ALPHA)  # NaN (too few seeds, a tie) is not
    cols = ["method", "dataset", "metric", "direction", "mean", "std", "sem"]
    cols += ["ci95_low", "ci95_high", "n", "runs", "failed", "best", "p_value"]
    return out[cols].sort_values(["dataset", "method", "metric"])


def _t_quantile(n: pd.Series) -> np.ndarray:
    """The 97.5% quantile of Student's t with n - 1 degrees of freedom (NaN for n < 2)."""
    dof = n.to_numpy(float) - 1
    return np.where(dof >= 1, stats_t.ppf(0.975, np.maximum(dof, 1)), np.nan)


def welch_p(best: np.ndarray, other: np.ndarray, better: str) -> float:
    """One-sided p-value of Welch's t-test that `best` is better than `other` in the
    direction `better`; NaN with fewer than 2 values on either side or two identical
    constant sets. Two constant sets that differ (a replica group's shared step time, a
    count every seed agrees on) have no spread for t to use (t = inf, p = 0 would bold a
    single measurement copied per seed): there the p-value is the exact permutation
    test's, 1 / C(n1 + n2, n1), the chance of so clean a split under no difference
    (3 seeds a side: 0.05, not below the level; 5 a side: 0.004)."""
    if len(best) < 2 or len(other) < 2:
        return math.nan
    if np.ptp(best) == 0 and np.ptp(other) == 0:
        gap = best[0] - other[0] if better == "higher" else other[0] - best[0]
        if gap == 0:
            return math.nan
        return 1.0 / math.comb(len(best) + len(other), len(best)) if gap > 0 else 1.0
    with warnings.catch_warnings():  # one constant sample: scipy warns, the result stands
        warnings.simplefilter("ignore", RuntimeWarning)
        alternative = "greater" if better == "higher" else "less"
        result = ttest_ind(best, other, equal_var=False, alternative=alternative)
    return float(result.pvalue)


def significance_words() -> str:
    """How `best` is decided, for the captions of tables that bold it."""
    return (
        "bold: the best mean, only where it beats the runner-up across seeds by Welch's "
        f"t-test (one-sided in the metric's direction, level {ALPHA:g}; where both sides "
        "are constant over seeds, the exact permutation p-value 1/C(n1+n2, n1)); nothing "
        "is bold with fewer than 2 seeds on either side or where the test does not reject"
    )


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Wide: per (method, dataset) the run and failure counts and <metric>_mean/_std."""
    agg = aggregate(df)
    counts = agg.groupby(["method", "dataset"])[["runs", "failed"]].first()
    stats = agg[agg["metric"] != ""].set_index(["method", "dataset", "metric"])[["mean", "std"]]
    wide = stats.unstack("metric")
    wide.columns = [f"{metric}_{stat}" for stat, metric in wide.columns]
    return counts.join(wide, how="left")


# -- formatting ---------------------------------------------------------------------


def _decimals(x: float, sig: int) -> int:
    if not math.isfinite(x) or x == 0:
        return 0
    return max(0, min(6, sig - 1 - math.floor(math.log10(abs(x)))))


def fmt_stat(mean: float, std: float, sem: float, n: int, error: str = "both") -> str:
    """`mean ± std (sem)`: the error to 2 significant digits and the mean to the same
    decimal place; one seed (or no spread): the mean to 4 significant digits."""
    if n == 0 or pd.isna(mean):
        return "—"
    if n < 2 or pd.isna(std) or std == 0:
        text = f"{mean:.{_decimals(mean, 4)}f}"
        text = text.rstrip("0").rstrip(".") if "." in text else text
        return text + (" ± 0" if n >= 2 else "")
    err = {"std": std, "sem": sem, "both": std}[error]
    d = _decimals(err, 2)
    text = f"{mean:.{d}f} ± {err:.{d}f}"
    if error == "both":
        text += f" ({sem:.{_decimals(sem, 2)}f})"
    return text


def _error_words(error: str) -> str:
    return {
        "std": "mean ± std over seeds",
        "sem": "mean ± standard error over seeds",
        "both": "mean ± std (standard error) over seeds",
    }[error]


NEAR = "‡"  # a value read near its metric's threshold (MetricSpec.flagged_by)


def _cell(agg_row: pd.Series | None, error: str, n_ok: int, near: bool = False) -> Cell:
    if agg_row is None:
        return Cell("—")
    text = fmt_stat(agg_row["mean"], agg_row["std"], agg_row["sem"], int(agg_row["n"]), error)
    if 0 < agg_row["n"] < n_ok:
        text += f" [n={int(agg_row['n'])}]"
    if near:
        text += f" {NEAR}"
    return Cell(text, bool(agg_row["best"]))


def _near(look: dict, method: str, dataset: str, metric: str) -> bool:
    """Whether `metric` was read near its threshold in some seed: the metric its
    declaration names in `flagged_by` is above 0 on average (it counts, so >= 0)."""
    spec = spec_of(metric)
    flag = look.get((method, dataset, spec.flagged_by)) if spec and spec.flagged_by else None
    return flag is not None and bool(flag["mean"] > 0)


def _near_words(metrics: list[str], rows: list[list[Cell]]) -> str:
    """The caption's note on flagged cells (empty when no cell is flagged)."""
    if not any(NEAR in c.text for row in rows for c in row):
        return ""
    flagged = [(m, spec_of(m).flagged_by) for m in metrics if spec_of(m) and spec_of(m).flagged_by]
    return "".join(
        f" {NEAR} on {label(m)}: read near its threshold in at least one seed ({f} > 0: "
        f"{spec_of(f).definition if spec_of(f) else f}); such a count is not a finding."
        for m, f in flagged
    )


def _lookup(agg: pd.DataFrame) -> dict[tuple[str, str, str], pd.Series]:
    return {(r.method, r.dataset, r.metric): r for _, r in agg.iterrows()}


def final_table(agg: pd.DataFrame, dataset: str, error: str = "both") -> Table:
    """Rows: methods; columns: seeds (ok/failed) and every shown metric of `dataset`."""
    sub = agg[agg["dataset"] == dataset]
    metrics = table_metrics(sub["metric"].unique().tolist())
    look = _lookup(sub)
    header = ["method", "seeds ok (failed)", *metrics]
    rows = []
    for method in sort_methods(sub["method"]):
        g = sub[sub["method"] == method]
        runs, failed = int(g["runs"].iloc[0]), int(g["failed"].iloc[0])
        n_ok = runs - failed
        row = [Cell(method), Cell(f"{n_ok} ({failed})")]
        row += [
            _cell(look.get((method, dataset, m)), error, n_ok, _near(look, method, dataset, m))
            for m in metrics
        ]
        rows.append(row)
    arrows = ", ".join(f"{m} {arrow(m)}" for m in metrics if arrow(m))
    caption = (
        f"{dataset}: final evaluation of each run, {_error_words(error)}"
        + (f"; {significance_words()} ({arrows})" if arrows else "")
        + "; [n=k]: only k runs had a finite value. The CSV adds t-based 95% confidence "
        "intervals over seeds (ci95_low, ci95_high) and each best cell's p-value."
        + _near_words(metrics, rows)
    )
    data = sub[sub["metric"].isin(metrics) | (sub["metric"] == "")]
    return Table(f"final-{dataset}", f"Final metrics on {dataset}", header, rows, caption, data)


def mixture_columns(agg: pd.DataFrame, datasets: list[str]) -> list[str]:
    """The metrics of the MIXTURE_LAYOUT columns: all VEEGAN/PacGAN's definitions where
    `datasets` have any of them, else all ours (never a mix of the two)."""
    present = set(agg.loc[agg["dataset"].isin(datasets), "metric"])
    theirs = [t for t, _ in MIXTURE_LAYOUT]
    return theirs if present & set(theirs) else [o for _, o in MIXTURE_LAYOUT]


def _of(text: str, modes: int) -> str:
    """A mode count's header with its total: "modes (of 8)", "modes (N=2,500; of 8)"."""
    return f"{text[:-1]}; of {modes})" if text.endswith(")") else f"{text} (of {modes})"


def _definitions(metrics: list[str]) -> str:
    return " ".join(f"{label(m)}: {spec_of(m).definition}" for m in metrics)


def mixture_table(agg: pd.DataFrame, datasets: list[str], error: str, modes: dict) -> Table:
    """VEEGAN/PacGAN Table 1 layout: methods x (dataset: modes, % high quality, reverse KL),
    by their definitions on 2,500 samples where the results have them."""
    metrics = mixture_columns(agg, datasets)
    look = _lookup(agg)
    counts = agg.groupby(["method", "dataset"])[["runs", "failed"]].first()
    header, groups = ["method"], [("", 1)]
    for d in datasets:
        for m in metrics:
            of = spec_of(m).unit == "modes" and modes.get(d)
            header.append(_of(label(m), modes[d]) if of else label(m))
        groups.append((d, len(metrics)))
    rows = []
    for method in sort_methods(agg.loc[agg["dataset"].isin(datasets), "method"]):
        row = [Cell(method)]
        for d in datasets:
            n_ok = (
                int(counts.loc[(method, d), "runs"] - counts.loc[(method, d), "failed"])
                if (method, d) in counts.index
                else 0
            )
            row += [
                _cell(look.get((method, d, m)), error, n_ok, _near(look, method, d, m))
                for m in metrics
            ]
        rows.append(row)
    data = agg[agg["dataset"].isin(datasets) & agg["metric"].isin(metrics)]
    caption = (
        f"2-D mixtures in the layout of VEEGAN/PacGAN Table 1: {_error_words(error)}; "
        f"{_arrows(metrics)}; {significance_words()}. Definitions: {_definitions(metrics)}"
        + _near_words(metrics, rows)
    )
    return Table(
        "mixture-2d", "2-D mixtures (VEEGAN/PacGAN layout)", header, rows, caption, data, groups
    )


def _arrows(metrics: list[str]) -> str:
    """Each metric's label and declared direction, as in "modes ↑, reverse KL ↓"."""
    return ", ".join(f"{label(m)} {arrow(m)}".strip() for m in metrics)


def stacked_metric_names(metrics: set[str]) -> dict[str, str] | None:
    """{"Modes": name, "KL": name} when a dataset has both LBT Table 1 metrics."""
    return dict(TABLE1_LAYOUT) if set(TABLE1_LAYOUT.values()) <= set(metrics) else None


def stacked_table(agg: pd.DataFrame, dataset: str, names: dict[str, str], error: str) -> Table:
    """LBT Table 1 layout: rows Modes and KL, one column per method."""
    sub = agg[agg["dataset"] == dataset]
    look = _lookup(sub)
    methods = sort_methods(sub["method"])
    counts = sub.groupby("method")[["runs", "failed"]].first()
    rows = []
    for row_label, metric in names.items():
        row = [Cell(row_label)]
        for m in methods:
            n_ok = int(counts.loc[m, "runs"] - counts.loc[m, "failed"])
            row.append(_cell(look.get((m, dataset, metric)), error, n_ok))
        rows.append(row)
    failed = {m: int(counts.loc[m, "failed"]) for m in methods}
    ok = {m: int(counts.loc[m, "runs"]) - failed[m] for m in methods}
    rows.append([Cell("seeds ok (failed)"), *(Cell(f"{ok[m]} ({failed[m]})") for m in methods)])
    caption = (
        f"{dataset} in the layout of LBT Table 1 ({_arrows(list(names.values()))}), "
        f"{_error_words(error)}; {significance_words()}."
    )
    data = sub[sub["metric"].isin(names.values())]
    return Table(
        f"table1-{dataset}", f"{dataset} (LBT Table 1 layout)", ["", *methods], rows, caption, data
    )


# -- published numbers --------------------------------------------------------------


def published() -> pd.DataFrame:
    """Published numbers, one a row, each with its paper and table (report/published.csv)."""
    text = resources.files("mcbench.report").joinpath("published.csv").read_text()
    df = pd.read_csv(StringIO(text), comment="#", dtype={"match_params": str, "setting": str})
    return df.fillna({"setting": "", "match_class": "", "match_params": "", "note": ""})


def _norm(name: str) -> str:
    return "".join(c for c in str(name).lower() if c.isalnum())


def _same(a: Any, b: str) -> bool:
    try:
        return math.isclose(float(a), float(b))
    except (TypeError, ValueError):
        return str(a).lower() == str(b).lower()


def method_identity(results: Results) -> dict[tuple[str, str], tuple[str, dict]]:
    """(method label, dataset) -> (method class, hyperparameters) of its first run."""
    out = {}
    for r in results.runs.itertuples():
        key = (r.method, r.dataset)
        if key in out or getattr(r, "regularizers", "none") != "none":
            continue  # a run with instance noise or its own rates is not the paper's method
        cfg = results.configs.get(r.run, {})
        try:
            name, params = parse_selector(r.selector)
        except McbenchError:
            name, params = r.selector, {}
        cls = cfg.get("method_class", name)
        hyper = {**params, **(cfg.get("params") or {}), **(cfg.get("hyperparameters") or {})}
        out[key] = (cls, hyper)
    return out


def _matches(pub: pd.Series, cls: str, hyper: dict) -> bool:
    if not pub["match_class"] or _norm(pub["match_class"]) != _norm(cls):
        return False
    for part in filter(None, str(pub["match_params"]).split(";")):
        k, v = part.split("=", 1)
        if k not in hyper or not _same(hyper[k], v):
            return False
    return True


def eval_samples(results: Results) -> dict[tuple[str, str], set[int]]:
    """(method label, dataset) -> the numbers of samples its runs were evaluated on
    (config.json budget; empty when only results.csv is left)."""
    out: dict[tuple[str, str], set[int]] = {}
    for r in results.runs.itertuples():
        n = results.configs.get(r.run, {}).get("budget", {}).get("eval_samples")
        got = out.setdefault((r.method, r.dataset), set())
        if n:
            got.add(int(n))
    return out


def our_samples(metric: str, evaluated: set[int]) -> int | str:
    """The N behind our value of `metric`: the one its definition fixes, else the one our
    runs evaluated; a reason (str) when that is unknown or differs between runs."""
    fixed = spec_of(metric).samples
    if fixed is not None:
        return fixed
    if len(evaluated) == 1:
        return next(iter(evaluated))
    if not evaluated:
        return "our N is not recorded"
    return f"our runs mix N = {', '.join(f'{n:,}' for n in sorted(evaluated))}"


def _n_text(n: Any) -> str:
    return f"{int(n):,}" if pd.notna(n) else "not stated"


def comparison_table(results: Results, agg: pd.DataFrame, dataset: str, error: str) -> Table | None:
    """Every published number for `dataset`, with ours for the matching method beside it
    only where the metric (its definition) and the number of samples N are the same;
    otherwise the cell says why not."""
    pub = published()
    pub = pub[pub["dataset"] == dataset]
    if pub.empty:
        return None
    ident = {k: v for k, v in method_identity(results).items() if k[1] == dataset}
    evaluated = eval_samples(results)
    look = _lookup(agg[agg["dataset"] == dataset])
    header = [
        "source",
        "their method",
        "setting",
        "metric",
        "N",
        "theirs",
        "ours (mcbench method: value)",
    ]
    rows, data = [], []
    for _, p in pub.iterrows():
        metric = p["metric"]
        ours = []
        for (method, _), (cls, hyper) in sorted(ident.items()):
            if not (_matches(p, cls, hyper) and (method, dataset, metric) in look):
                continue
            r = look[(method, dataset, metric)]
            n = our_samples(metric, evaluated.get((method, dataset), set()))
            same = isinstance(n, int) and pd.notna(p["samples"]) and n == int(p["samples"])
            if same:
                near = f" {NEAR}" if _near(look, method, dataset, metric) else ""
                ours.append(
                    f"{method}: {fmt_stat(r['mean'], r['std'], r['sem'], int(r['n']), error)}"
                    + near
                )
            elif isinstance(n, int):
                why = f"ours on N = {n:,}" if pd.notna(p["samples"]) else "the source states no N"
                ours.append(f"{method}: not comparable ({why})")
            else:
                ours.append(f"{method}: not comparable ({n})")
            data.append(
                {
                    **p.to_dict(),
                    "ours_method": method,
                    "ours_samples": n if isinstance(n, int) else np.nan,
                    "comparable": same,
                    "ours_mean": r["mean"],
                    "ours_std": r["std"],
                    "ours_sem": r["sem"],
                    "ours_ci95_low": r["ci95_low"],
                    "ours_ci95_high": r["ci95_high"],
                    "ours_n": int(r["n"]),
                }
            )
        if not ours:
            data.append(
                {
                    **p.to_dict(),
                    "ours_method": "",
                    "ours_samples": np.nan,
                    "comparable": False,
                    "ours_mean": np.nan,
                    "ours_std": np.nan,
                    "ours_sem": np.nan,
                    "ours_ci95_low": np.nan,
                    "ours_ci95_high": np.nan,
                    "ours_n": 0,
                }
            )
        theirs = f"{p['value']:g}"
        if pd.notna(p["error"]):
            theirs += f" ± {p['error']:g}"
        if pd.notna(p["runs"]):
            theirs += f" ({int(p['runs'])} runs)"
        source = f"{p['source']}, {p['table']}"
        shown = [source, p["method"], p["setting"], label(metric), _n_text(p["samples"])]
        rows.append(cells([*shown, theirs, "; ".join(ours) or "—"]))
    metrics = list(dict.fromkeys(pub["metric"]))
    caption = (
        f"{dataset}: published numbers, each with the paper and table it is quoted from "
        "(mcbench/report/published.csv) and the number of samples N it was evaluated on, "
        f"beside ours ({_error_words(error)}) only where our metric has the same "
        "definition and was computed on the same N; otherwise the cell says why. "
        f"Definitions: {_definitions(metrics)} The published protocols still differ from "
        "ours in budget and architecture: read differences with that in mind."
        + _near_words(metrics, rows)
    )
    return Table(
        f"published-{dataset}",
        f"{dataset}: ours beside published",
        header,
        rows,
        caption,
        pd.DataFrame(data),
    )


# -- the report ---------------------------------------------------------------------


def markdown(df: pd.DataFrame, error: str = "std", runs: pd.DataFrame | None = None) -> str:
    """Final-metrics tables of every dataset as Markdown (printed by `mcbench run`)."""
    agg = aggregate(df, runs)
    parts = []
    for dataset in dataset_order(agg["dataset"]):
        t = final_table(agg, dataset, error)
        parts += [f"### {dataset}", "", t.markdown(), "", t.caption, ""]
    return "\n".join(parts).rstrip("\n")


def run_table(results: Results) -> pd.DataFrame:
    """One row per run: identity, status and its final value of each shown metric."""
    fin = final_metrics(results.rows) if len(results.rows) else results.rows
    wide = fin.pivot_table(index="run", columns="metric", values="value", aggfunc="first")
    wide = wide[table_metrics(list(wide.columns))]
    base = results.runs[["run", "method", "dataset", "seed", "status", "failed_step", "reason"]]
    return base.merge(wide.reset_index(), on="run", how="left").sort_values(
        ["dataset", "method", "seed"]
    )


def _dict_rows(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for k, v in sorted(d.items()):
        if isinstance(v, dict):
            out += _dict_rows(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", json.dumps(v) if isinstance(v, list | bool) else str(v)))
    return out


def _distinct(items: list[dict]) -> list[tuple[dict, int]]:
    seen: dict[str, tuple[dict, int]] = {}
    for it in items:
        key = json.dumps(it, sort_keys=True, default=str)
        d, n = seen.get(key, (it, 0))
        seen[key] = (d, n + 1)
    return list(seen.values())


def software_versions() -> dict[str, str]:
    return {
        "mcbench": mcbench.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "matplotlib": matplotlib.__version__,
        "seaborn": seaborn.__version__,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def _config_sections(doc: Document, results: Results) -> list[Table]:
    tables = []
    runs = results.runs
    cfgs = [results.configs.get(r, {}) for r in runs["run"]]
    doc.heading("Configuration")
    budgets = pd.DataFrame(
        [
            {"dataset": r.dataset, **results.configs.get(r.run, {}).get("budget", {})}
            for r in runs.itertuples()
        ]
    )
    if len(budgets.columns) > 1:
        b = budgets.value_counts().reset_index(name="runs").sort_values(list(budgets.columns))
        t = frame_table(
            "budgets",
            "Budgets",
            b,
            "Training budget (generator updates) and evaluation, per dataset.",
        )
        doc.table(t)
        tables.append(t)
    hyper = []
    for r in runs.drop_duplicates("method").itertuples():
        cfg = results.configs.get(r.run, {})
        hp = cfg.get("hyperparameters")
        if hp is not None:
            hyper.append(
                {
                    "method": r.method,
                    "class": cfg.get("method_class", ""),
                    "hyperparameters": ", ".join(f"{k}={v}" for k, v in sorted(hp.items())),
                }
            )
    if hyper:
        t = frame_table(
            "hyperparameters",
            "Hyperparameters",
            pd.DataFrame(hyper).sort_values("method"),
            "Resolved hyperparameters of each method selector (from config.json).",
        )
        doc.table(t)
        tables.append(t)
    protocols = _distinct([c["protocol"] for c in cfgs if c.get("protocol")])
    for proto, n in protocols:
        fam = proto.get("family", "")
        t = frame_table(
            f"protocol-{fam}",
            f"Protocol {fam}",
            pd.DataFrame(_dict_rows(proto), columns=["field", "value"]),
            f"Protocol of family {fam} ({n} runs): what every method shares.",
        )
        doc.table(t)
        tables.append(t)
    doc.heading("Datasets and their sources")
    infos = _distinct([c["dataset_info"] for c in cfgs if c.get("dataset_info")])
    if infos:
        keys = ["name", "family", "source", "modes", "std", "shape", "evaluation"]
        extra = sorted({k for d, _ in infos for k in d} - set(keys))
        df = pd.DataFrame([{k: _short(d.get(k, "")) for k in keys + extra} for d, _ in infos])
        df = df.loc[:, (df != "").any()]
        t = frame_table(
            "datasets",
            "Datasets",
            df.sort_values("name"),
            "Data source of each dataset (config.json dataset_info).",
        )
        doc.table(t)
        tables.append(t)
    else:
        doc.para("No run folder records dataset_info (results.csv only).")
    doc.heading("Environment")
    envs = _distinct([c["environment"] for c in cfgs if c.get("environment")])
    if envs:
        keys = sorted({k for e, _ in envs for k in e})
        df = pd.DataFrame([{**{k: e.get(k, "") for k in keys}, "runs": n} for e, n in envs])
        t = frame_table(
            "environment",
            "Environment",
            df,
            "Software and device the runs were trained with (config.json environment).",
        )
        doc.table(t)
        tables.append(t)
    sv = software_versions()
    t = frame_table(
        "report-software",
        "Report software",
        pd.DataFrame(list(sv.items()), columns=["package", "version"]),
        "Software that drew this report.",
    )
    doc.table(t)
    tables.append(t)
    return tables


def _short(v: Any) -> str:
    return json.dumps(v) if isinstance(v, list | dict) else str(v)


def build_report(results: Results, opts: Options) -> dict[str, Any]:
    """Write tables/, figures/, report.md and report.html under opts.out."""
    t0 = time.perf_counter()
    out = opts.out
    tables_dir, fig_dir = out / "tables", out / "figures"
    tables_dir.mkdir(parents=True, exist_ok=True)
    agg = aggregate(results.rows, results.runs)
    runs = results.runs
    datasets = dataset_order(runs["dataset"])
    families = runs.groupby("dataset")["family"].first().to_dict()
    doc = Document("mcbench report")
    ok = int((runs["status"] == "ok").sum())
    doc.para(
        f"{len(runs)} runs ({ok} ok, {len(runs) - ok} failed) of {runs['method'].nunique()} "
        f"method(s) on {len(datasets)} dataset(s) ({', '.join(datasets)}), seeds "
        f"{', '.join(map(str, sorted(runs['seed'].unique())))}; read from "
        f"{', '.join(f'`{s}`' for s in results.sources)}. Regenerate with "
        f"`mcbench report {' '.join(str(s) for s in results.sources)}`."
    )
    tables: list[Table] = []
    doc.heading("Final metrics")
    for d in datasets:
        t = final_table(agg, d, opts.error)
        doc.heading(d, 3)
        doc.table(t)
        tables.append(t)
    mixtures = [d for d in datasets if _is_mixture(d, families, agg)]
    if mixtures:
        modes = {d: _modes_of(results, d) for d in mixtures}
        t = mixture_table(agg, mixtures, opts.error, modes)
        doc.heading("2-D mixtures: VEEGAN/PacGAN table layout")
        doc.table(t)
        tables.append(t)
    for d in datasets:
        if d in mixtures:
            continue
        names = stacked_metric_names(set(agg.loc[agg["dataset"] == d, "metric"]))
        if names:
            t = stacked_table(agg, d, names, opts.error)
            doc.heading(f"{d}: LBT Table 1 layout")
            doc.table(t)
            tables.append(t)
    if opts.published:
        comps = [c for d in datasets if (c := comparison_table(results, agg, d, opts.error))]
        if comps:
            doc.heading("Ours beside the published numbers")
            for t in comps:
                doc.table(t)
                tables.append(t)
    failed = runs[runs["status"] != "ok"]
    doc.heading("Failed runs")
    if failed.empty:
        doc.para("None: every run finished with finite losses and samples.")
    else:
        f = failed[["run", "method", "dataset", "seed", "failed_step", "reason"]].copy()
        f["reason"] = f["reason"].astype(str).str.slice(0, 160)
        t = frame_table(
            "failed-runs",
            "Failed runs",
            f,
            "Runs that stopped early (config.json status, failed_step, reason); they count "
            "in 'failed' and in no statistic.",
        )
        doc.table(t)
        tables.append(t)
    figures: list[Figure] = []
    if opts.figures:
        made = figs.all_figures(results, fig_dir, opts, families)
        doc.heading("Figures")
        for f in made:
            doc.figure(f)
        figures += made
        for note in figs.NOTES:
            results.notes.append(note)
        figs.NOTES.clear()
    if opts.unroll_study is not None or (study := _find_study(results)) is not None:
        path = opts.unroll_study or study
        doc.heading("Unroll-depth study")
        got_tables, got_figs, texts = figs.unroll_study(path, fig_dir, opts)
        doc.para(f"Read from `{path}`.")
        for text in texts:
            doc.code(text)
        for t in got_tables:
            doc.table(t)
            tables.append(t)
        for f in got_figs:
            doc.figure(f)
            figures.append(f)
    t = frame_table("runs", "Runs", run_table(results), "Every run with its final metrics.")
    tables.append(t)
    doc.heading("Runs")
    doc.para("Every run's identity, status and final metrics: `tables/runs.csv`.")
    tables += _config_sections(doc, results)
    foreign = undeclared(results.rows["metric"]) if len(results.rows) else []
    if foreign:
        results.notes.append(
            f"Metrics declared by no loaded module, shown without a direction: "
            f"{', '.join(foreign)} (declare them with mcbench.metrics.register_metric)."
        )
    if plugin_error():
        results.notes.append(f"Method plugins could not all be loaded: {plugin_error()}")
    if results.notes:
        doc.heading("Notes")
        for n in results.notes:
            doc.para(n)
    agg.to_csv(tables_dir / "summary.csv", index=False)
    for t in tables:
        t.write(tables_dir)
    (out / "report.md").write_text(doc.markdown(out))
    (out / "report.html").write_text(doc.html())
    return {
        "out": out,
        "tables": len(tables),
        "figures": len(figures),
        "seconds": time.perf_counter() - t0,
        "agg": agg,
        "tables_list": tables,
        "figures_list": figures,
    }


def _is_mixture(dataset: str, families: dict[str, str], agg: pd.DataFrame) -> bool:
    """A 2-D mixture: by its family, or (results.csv only) by its metrics."""
    if families.get(dataset):
        return families[dataset] == "mixture2d"
    return set(MIXTURE_CORE) <= set(agg.loc[agg["dataset"] == dataset, "metric"])


def _modes_of(results: Results, dataset: str) -> int | None:
    for r in results.runs[results.runs["dataset"] == dataset].itertuples():
        m = results.configs.get(r.run, {}).get("dataset_info", {}).get("modes")
        if m:
            return int(m)
    return None


STUDY_GLOBS = ("unroll*", "depth*study*")


def _find_study(results: Results) -> Path | None:
    """An unroll-depth study folder (with a CSV) inside or beside a results folder."""
    for src in results.sources:
        for folder in (src, src.parent):
            for pattern in STUDY_GLOBS:
                for p in sorted(folder.glob(pattern)):
                    if p.is_dir() and any(p.rglob("*.csv")):
                        return p
    return None


def run(args: argparse.Namespace) -> None:
    dirs = args.results_dir if isinstance(args.results_dir, list) else [args.results_dir]
    results = load_results(dirs)  # reads only; refuses a source that is not results
    out = Path(args.out) if getattr(args, "out", None) else Path(dirs[0]) / "report"
    for q in (out, *out.parents):  # before anything is written: mkdir would fail late
        if q.exists() and not q.is_dir():
            raise McbenchError(f"report folder {out}: {q} is a file, not a folder")
    if args.density_samples < 0:
        raise McbenchError("--density-samples must be >= 0")
    device = getattr(args, "device", "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise McbenchError(f"unknown torch device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise McbenchError(f"--device {device}: no CUDA device here")
    study = Path(args.unroll_study) if getattr(args, "unroll_study", None) else None
    if study is not None and not study.exists():
        raise McbenchError(f"unroll study {study} does not exist")
    opts = Options(
        out=out,
        error=getattr(args, "error", "both"),
        density_samples=getattr(args, "density_samples", DENSITY_SAMPLES),
        figures=not getattr(args, "no_figures", False),
        pdf=not getattr(args, "no_pdf", False),
        published=not getattr(args, "no_published", False),
        unroll_study=study,
        device=device,
    )
    info = build_report(results, opts)
    show = "none" if getattr(args, "quiet", False) else getattr(args, "show", "final")
    if show == "final":
        print(markdown(results.rows, "std", results.runs))
        print()
    elif show in ("published", "all"):
        for t in info["tables_list"]:
            if show == "all" or t.name.startswith("published-"):
                print(f"### {t.title}\n\n{t.markdown()}\n\n{t.caption}\n")
    print(
        f"mcbench: report with {info['tables']} tables and {info['figures']} figures in "
        f"{info['seconds']:.1f} s -> {opts.out / 'report.md'}, {opts.out / 'report.html'}",
        file=sys.stderr,
    )
