"""Figures of a report (matplotlib figures outside pyplot, seaborn styling).

- density: the LBT paper's Figure 1, true distribution and each method's generator,
  a kernel density of samples drawn from each run's saved generator (rows: datasets);
- curves: Figure 2, each quality metric against generator updates, mean and a +-1 std
  band over seeds clipped to the metric's declared bounds (a mode count's band never runs
  below 0), on the axis scale its declaration names (the KLs: log, as in the paper);
- wallclock: the same metrics against training wall-clock time (evaluation excluded);
- diagnostics: every diagnostic metric (the LBT estimator's ELBOs: Figure 4 of the
  workshop paper) against updates, one panel per method and unit;
- samples: the sample grid each image run saved in its folder, one panel per method;
- unroll study: time and quality against the unroll depth K, from the study's CSV.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.image
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure as MplFigure
from scipy.ndimage import gaussian_filter

from mcbench.datasets import get_dataset
from mcbench.report.document import Figure, Table, frame_table
from mcbench.report.naming import (
    curve_metrics,
    dataset_order,
    diagnostic_metrics,
    label,
    method_key,
    sort_methods,
    spec_of,
)
from mcbench.report.options import Options
from mcbench.run.runner import derive_seed, generate, load_method

DPI = 100
BINS = 240
MAX_COLS = 7  # density panels per row; more methods wrap onto further rows
NOTES: list[str] = []  # things a figure had to leave out, reported in the notes section


def _palette(methods: list[str]) -> dict[str, Any]:
    methods = sort_methods(methods)
    name = "tab10" if len(methods) <= 10 else "tab20" if len(methods) <= 20 else "husl"
    colors = sns.color_palette(name, len(methods))
    return dict(zip(methods, colors, strict=True))


def _subplots(nrows: int, ncols: int, *, figsize, layout=None, **kw):
    """A figure that belongs to no pyplot state: drawing a report never changes a
    notebook's backend, never needs a display and never leaks open figures."""
    fig = MplFigure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kw)


def _legend(fig, handles: dict) -> None:
    """One legend for a figure's panels, below them."""
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncol=min(len(handles), 6),
        fontsize=8,
        frameon=False,
    )


def _save(fig, out_dir: Path, stem: str, title: str, caption: str, pdf: bool, metrics=()) -> Figure:
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{stem}.png"
    fig.savefig(png, dpi=DPI)
    pdf_path = None
    if pdf:
        pdf_path = out_dir / f"{stem}.pdf"
        fig.savefig(pdf_path, metadata={"CreationDate": None})  # same bytes on a re-run
    return Figure(title, png, caption, pdf_path, tuple(metrics))


def _styled(draw: Callable) -> Callable:
    """Draw in the report's seaborn style without leaving it set for the caller."""

    @functools.wraps(draw)
    def wrapped(*args, **kwargs):
        with matplotlib.rc_context():
            sns.set_theme(style="whitegrid", context="paper")
            return draw(*args, **kwargs)

    return wrapped


@_styled
def all_figures(results, out_dir: Path, opts: Options, families: dict[str, str]) -> list[Figure]:
    palette = _palette(results.runs["method"].tolist())
    out: list[Figure] = []
    if opts.density_samples > 0:
        f = density(results, out_dir, opts, palette)
        if f:
            out.append(f)
    ok = results.rows[results.rows["status"] == "ok"] if len(results.rows) else results.rows
    groups: dict[str, list[str]] = {}
    for d in dataset_order(results.runs["dataset"]):
        groups.setdefault(families.get(d) or d, []).append(d)
    for fam, datasets in groups.items():
        for x in ("step", "wall_time"):
            f = curves(ok, datasets, fam, x, out_dir, opts.pdf, palette)
            if f:
                out.append(f)
    f = diagnostics(ok, out_dir, opts.pdf)
    if f:
        out.append(f)
    out += sample_grids(results, out_dir, opts.pdf)
    return out


# -- Figure 1: densities ------------------------------------------------------------


def _representative(results, dataset: str) -> dict[str, Any]:
    """Per method, the ok run with the lowest seed that saved a generator."""
    runs = results.runs
    sub = runs[(runs["dataset"] == dataset) & (runs["status"] == "ok") & (runs["dir"] != "")]
    out = {}
    for method in sort_methods(sub["method"]):
        g = sub[sub["method"] == method].sort_values("seed")
        for r in g.itertuples():
            if (Path(r.dir) / "generator.pt").is_file():
                out[method] = r
                break
    return out


def _density_image(x: np.ndarray, extent: tuple[float, float, float, float], sigma: float):
    """A kernel density on a grid: 2-D histogram smoothed with a Gaussian kernel of
    `sigma` bins (a binned KDE; exact enough at plot resolution and fast for 1e5+)."""
    h, _, _ = np.histogram2d(
        x[:, 0], x[:, 1], bins=BINS, range=[[extent[0], extent[1]], [extent[2], extent[3]]]
    )
    return gaussian_filter(h, sigma).T


def density(results, out_dir: Path, opts: Options, palette) -> Figure | None:
    rows = []
    families = results.runs.groupby("dataset")["family"].first().to_dict()
    for d in dataset_order(results.runs["dataset"]):
        if families.get(d) not in ("", "mixture2d"):
            continue  # image datasets: no density (and no need to load their data)
        try:
            ds = get_dataset(d)
        except Exception:
            NOTES.append(f"density plot: dataset {d!r} is not registered here; left out")
            continue
        if not hasattr(ds, "centers") or tuple(ds.shape) != (2,):
            continue
        reps = _representative(results, d)
        if reps:
            rows.append((d, ds, reps))
    if not rows:
        return None
    device = torch.device(opts.device)
    n = opts.density_samples
    images = []  # per dataset: its extent and the panels (title, density image)
    for d, ds, reps in rows:
        lo, hi = ds.centers.min(0), ds.centers.max(0)
        pad = max(6 * ds.std, 0.15 * float((hi - lo).max()))
        extent = (lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad)
        sigma = max(0.7, 0.5 * ds.std / ((extent[1] - extent[0]) / BINS))
        gen = torch.Generator().manual_seed(derive_seed(0, f"report-data-{d}"))
        samples = [(f"data\n{d}", ds.sample(n, gen, torch.device("cpu")).numpy())]
        for method, r in reps.items():
            try:
                m = load_method(Path(r.dir), device)
                rng = torch.Generator(device=device).manual_seed(derive_seed(int(r.seed), "report"))
                samples.append((f"{method}\n{d}, seed {r.seed}", generate(m, n, rng).numpy()))
            except Exception as exc:  # a method missing here must not stop the report
                NOTES.append(f"density plot: could not sample {r.run}: {type(exc).__name__}: {exc}")
        panels = [(t, _density_image(x[np.isfinite(x).all(1)], extent, sigma)) for t, x in samples]
        images.append((extent, panels))
    ncol = min(MAX_COLS, max(len(p) for _, p in images))
    layout = [
        (extent, panels[k : k + ncol])
        for extent, panels in images
        for k in range(0, len(panels), ncol)
    ]
    fig, axes = _subplots(
        len(layout),
        ncol,
        figsize=(1.9 * ncol, 2.0 * len(layout)),
        squeeze=False,
        layout="constrained",
    )
    for i, (extent, panels) in enumerate(layout):
        for j in range(ncol):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if j >= len(panels):
                ax.axis("off")
                continue
            title, img = panels[j]
            ax.imshow(
                img,
                origin="lower",
                extent=extent,
                cmap="Greens",
                norm=PowerNorm(0.5),
                aspect="equal",
                interpolation="nearest",
            )
            ax.set_title(title, fontsize=7)
    caption = (
        f"Density of {n:,} samples from each method's final generator (lowest ok seed) and from "
        "the data, as the LBT paper's Figure 1: a 2-D histogram smoothed with a Gaussian kernel "
        "of half a mode std, square-root colour scale; rows: datasets."
    )
    return _save(fig, out_dir, "density", "Densities (LBT Figure 1)", caption, opts.pdf)


# -- Figure 2: metric against iterations or wall-clock -------------------------------


def _set_scale(ax, metric: str, values: np.ndarray) -> None:
    """The declared scale; a log-scale metric with zeros or negatives gets symlog."""
    if spec_of(metric).scale != "log":
        return
    v = values[np.isfinite(values)]
    if len(v) and (v > 0).all():
        ax.set_yscale("log")
    elif len(v) and (v > 0).any():
        ax.set_yscale("symlog", linthresh=float(v[v > 0].min()))


BAND_WORDS = (
    "band ±1 std, clipped to the metric's declared range (a count, a share or a KL never "
    "below 0, a share never above 100)"
)


def clipped_band(
    mean: pd.Series | np.ndarray, std: pd.Series | np.ndarray, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """mean -/+ std, clipped to the bounds `metric` declares: a band of a mode count
    must not run below zero where no seed ever did."""
    spec = spec_of(metric)
    lo = np.asarray(mean, float) - np.asarray(std, float)
    hi = np.asarray(mean, float) + np.asarray(std, float)
    if spec.lower is not None:
        lo, hi = np.maximum(lo, spec.lower), np.maximum(hi, spec.lower)
    if spec.upper is not None:
        lo, hi = np.minimum(lo, spec.upper), np.minimum(hi, spec.upper)
    return lo, hi


def _band(df: pd.DataFrame, x: str, metric: str) -> pd.DataFrame:
    """Mean and std over seeds at each evaluation step, and the band (lo, hi) clipped to
    the metric's bounds; x is averaged too (wall time)."""
    g = df.groupby("step")
    out = pd.DataFrame(
        {"x": g[x].mean(), "mean": g["value"].mean(), "std": g["value"].std().fillna(0.0)}
    ).sort_values("x")
    out["lo"], out["hi"] = clipped_band(out["mean"], out["std"], metric)
    return out


def _isolated(y: np.ndarray) -> np.ndarray:
    """Finite points with no finite neighbour: a line draws them invisibly (a run
    evaluated only at its last step is one such point), so they get a marker."""
    y = np.asarray(y, dtype=float)
    finite = np.isfinite(y)
    before = np.r_[False, finite[:-1]]
    after = np.r_[finite[1:], False]
    return finite & ~before & ~after


def curves(ok, datasets, family, x, out_dir, pdf, palette) -> Figure | None:
    present = set(ok.loc[ok["dataset"].isin(datasets), "metric"]) if len(ok) else set()
    metrics = curve_metrics(present)
    if not metrics:
        return None
    fig, axes = _subplots(
        len(datasets),
        len(metrics),
        figsize=(3.3 * len(metrics), 2.6 * len(datasets) + 0.6),
        squeeze=False,
        layout="constrained",
    )
    handles = {}
    for i, d in enumerate(datasets):
        sub = ok[ok["dataset"] == d]
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            part = sub[sub["metric"] == metric]
            for method in sort_methods(part["method"]):
                g = part[part["method"] == method]
                b = _band(g, x, metric)
                c = palette.get(method)
                alone = _isolated(b["mean"])
                (line,) = ax.plot(
                    b["x"],
                    b["mean"],
                    color=c,
                    lw=1.3,
                    label=method,
                    marker="o" if alone.any() else None,
                    ms=4,
                    markevery=alone if alone.any() else None,
                )
                ax.fill_between(b["x"], b["lo"], b["hi"], color=c, alpha=0.18, lw=0)
                handles.setdefault(method, line)
            _set_scale(ax, metric, part["value"].to_numpy(float))
            ax.set_title(f"{d}: {label(metric)}", fontsize=9)
            ax.set_ylabel(spec_of(metric).unit)
            ax.set_xlabel("generator updates" if x == "step" else "training time (s, log)")
            drawn = np.isfinite(part["value"].to_numpy(float)).any()  # all NaN: no log axis
            if x == "wall_time" and drawn and (part[x] > 0).all():
                ax.set_xscale("log")  # methods differ in cost per update by 10-100x
    if handles:
        handles = {m: handles[m] for m in sort_methods(handles)}
        _legend(fig, handles)
    if x == "step":
        stem, title = f"curves-{family}", f"Metrics against updates ({family}, LBT Figure 2)"
        what = "generator updates"
    else:
        stem, title = f"wallclock-{family}", f"Metrics against training time ({family})"
        what = "training wall-clock time (evaluation excluded, mean over seeds)"
    logs = [label(m) for m in metrics if spec_of(m).scale == "log"]
    caption = f"Each metric against {what}: mean over seeds, {BAND_WORDS}" + (
        f"; {', '.join(logs)} on a log axis as in the LBT paper's Figure 2." if logs else "."
    )
    return _save(fig, out_dir, stem, title, caption, pdf, metrics)


# -- Figure 4: diagnostics (the LBT estimator's ELBOs) ------------------------------


def diagnostics(ok, out_dir, pdf) -> Figure | None:
    """Each method's diagnostic metrics against updates: one panel per (dataset, method,
    unit), so that quantities of one kind (real and generated ELBO) share an axis."""
    if not len(ok):
        return None
    metrics = diagnostic_metrics(ok["metric"].unique())
    if not metrics:
        return None
    sub = ok[ok["metric"].isin(metrics)]
    unit = {m: spec_of(m).unit for m in metrics}
    keys = {
        (d, method, unit[m]) for (d, method, m), _ in sub.groupby(["dataset", "method", "metric"])
    }
    order = dataset_order(sub["dataset"])
    units = sorted(set(unit.values()))
    panels = sorted(keys, key=lambda k: (order.index(k[0]), method_key(k[1]), units.index(k[2])))
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = _subplots(
        nrow, ncol, figsize=(3.4 * ncol, 2.6 * nrow + 0.4), squeeze=False, layout="constrained"
    )
    colors = dict(zip(metrics, sns.color_palette("tab10", len(metrics)), strict=True))
    handles = {}
    for k, (d, method, u) in enumerate(panels):
        ax = axes.flat[k]
        part = sub[(sub["dataset"] == d) & (sub["method"] == method)]
        for metric in [m for m in metrics if unit[m] == u]:
            g = part[part["metric"] == metric]
            if g.empty:
                continue
            b = _band(g, "step", metric)
            c = colors[metric]
            (line,) = ax.plot(b["x"], b["mean"], color=c, lw=1.3, label=label(metric))
            ax.fill_between(b["x"], b["lo"], b["hi"], color=c, alpha=0.18, lw=0)
            _set_scale(ax, metric, g["value"].to_numpy(float))
            handles.setdefault(label(metric), line)
        ax.set_title(f"{method} on {d}", fontsize=9)
        ax.set_xlabel("generator updates")
        ax.set_ylabel(u)
    for k in range(len(panels), nrow * ncol):
        axes.flat[k].axis("off")
    _legend(fig, handles)
    shown = [m for m in metrics if m in set(sub["metric"])]
    what = "; ".join(f"{label(m)}: {spec_of(m).definition.rstrip('.')}" for m in shown)
    sources = sorted({spec_of(m).source for m in shown})
    caption = (
        f"Training diagnostics against generator updates, mean over seeds, {BAND_WORDS}. "
        f"{what} (as in {'; '.join(sources)})."
    )
    title = "Training diagnostics (ELBO: LBT workshop Figure 4)"
    return _save(fig, out_dir, "diagnostics", title, caption, pdf, shown)


# -- sample grids ---------------------------------------------------------------------


def _grid_png(run_dir: Path) -> Path | None:
    pngs = sorted(run_dir.glob("*.png"))
    if not pngs:
        return None
    named = [p for p in pngs if "sample" in p.name.lower()]
    return (named or pngs)[0]


def sample_grids(results, out_dir, pdf) -> list[Figure]:
    out = []
    runs = results.runs
    for d in dataset_order(runs["dataset"]):
        sub = runs[(runs["dataset"] == d) & (runs["status"] == "ok") & (runs["dir"] != "")]
        found = []
        for method in sort_methods(sub["method"]):
            g = sub[sub["method"] == method].sort_values("seed")
            for r in g.itertuples():
                png = _grid_png(Path(r.dir))
                if png is not None:
                    found.append((method, r.seed, png))
                    break
        if not found:
            continue
        ncol = min(4, len(found))
        nrow = math.ceil(len(found) / ncol)
        fig, axes = _subplots(
            nrow, ncol, figsize=(3.2 * ncol, 3.4 * nrow), squeeze=False, layout="constrained"
        )
        for k, (method, seed, png) in enumerate(found):
            ax = axes.flat[k]
            ax.imshow(matplotlib.image.imread(png))
            ax.set_title(f"{method} (seed {seed})", fontsize=9)
            ax.axis("off")
        for k in range(len(found), nrow * ncol):
            axes.flat[k].axis("off")
        caption = f"Samples of each method's final generator on {d} (the grid each run saved)."
        out.append(_save(fig, out_dir, f"samples-{d}", f"Samples on {d}", caption, pdf))
    return out


# -- unroll-depth study -----------------------------------------------------------------

K_NAMES = ("K", "k", "unroll", "unroll_steps", "unroll_depth", "depth")
HUE_NAMES = ("method", "name", "selector")


def unroll_study(path: Path, out_dir: Path, opts) -> tuple[list[Table], list[Figure], list[str]]:
    """The study's CSVs as tables, its own PNGs (copied beside the report's figures) and
    machine description; when the study drew no PNG, a plot per CSV of every numeric
    column against K (mean and band over seeds; one line per method and budget)."""
    path = Path(path)
    csvs = [path] if path.is_file() else sorted(path.rglob("*.csv"))
    pngs = [] if path.is_file() else sorted(path.rglob("*.png"))
    tables, figures, texts = [], [], []
    for i, csv in enumerate(csvs):
        try:
            df = pd.read_csv(csv)
        except (OSError, ValueError) as exc:
            NOTES.append(f"unroll study: cannot read {csv}: {exc}")
            continue
        stem = f"unroll-{i}-{csv.stem}"
        caption = f"{csv.name} ({len(df)} rows" + (", first 200 shown)" if len(df) > 200 else ")")
        tables.append(frame_table(stem, f"Unroll study: {csv.name}", df.head(200), caption))
        kcol = next((c for c in K_NAMES if c in df.columns), None)
        if kcol is None or pngs:
            continue
        f = _study_plot(df, kcol, out_dir, stem, csv.name, opts.pdf)
        if f:
            figures.append(f)
    for png in pngs:
        copy = Path(out_dir) / f"unroll-{png.name}"
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(png.read_bytes())
        figures.append(
            Figure(f"Unroll study: {png.stem}", copy, f"{png.name}, drawn by the study.")
        )
    if path.is_dir():
        for js in sorted(path.glob("*.json")):
            texts.append(f"{js.name}:\n{js.read_text()}")
    return tables, figures, texts


@_styled
def _study_plot(df: pd.DataFrame, kcol: str, out_dir, stem: str, name: str, pdf: bool):
    cats = [c for c in df.columns if df[c].dtype == object or str(df[c].dtype) == "str"]
    ys = [
        c
        for c in df.select_dtypes("number").columns
        if c not in (kcol, "seed", "repeat") and df[c].notna().any()
    ]
    if not ys:
        return None
    label = df[cats].astype(str).agg(", ".join, axis=1) if cats else pd.Series("", index=df.index)
    pal = _palette(label.unique().tolist())
    fig, axes = _subplots(
        1, len(ys), figsize=(3.2 * len(ys), 3.0), squeeze=False, layout="constrained"
    )
    for j, y in enumerate(ys):
        ax = axes[0, j]
        for lab, g in df.groupby(label, sort=True):
            s = g.groupby(kcol)[y].agg(["mean", "std"]).fillna(0.0).sort_index()
            ax.plot(s.index, s["mean"], marker="o", ms=3, color=pal[lab], label=str(lab))
            lo, hi = clipped_band(s["mean"], s["std"], y)
            ax.fill_between(s.index, lo, hi, color=pal[lab], alpha=0.18, lw=0)
        if (df[kcol] > 0).all():
            ax.set_xscale("log", base=2)
        ax.set_xlabel(kcol)
        ax.set_title(y, fontsize=9)
    if cats:
        axes[0, 0].legend(fontsize=7)
    caption = (
        f"Every numeric column of {name} against {kcol}: mean over repeats, band ±1 std "
        "(a declared metric's band clipped to its range, e.g. a count at 0)."
    )
    return _save(fig, out_dir, stem, f"Unroll study: {Path(name).stem}", caption, pdf)
