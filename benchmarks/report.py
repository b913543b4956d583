"""Tables from a results folder: final metrics per method and dataset over seeds."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from mcbench import results as res
from mcbench.errors import McbenchError

# Metrics shown in the summary, in order, with the direction that is better.
SUMMARY = {
    "modes_covered": "higher",
    "high_quality_pct": "higher",
    "intra_mode_kl": "lower",
    "reverse_kl": "lower",
    "step_time_ms": "lower",
}


def load(results_dir: Path) -> pd.DataFrame:
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise McbenchError(f"results folder {results_dir} does not exist")
    df = res.collect(results_dir)
    if df.empty:
        raise McbenchError(f"no finished runs under {results_dir}/runs")
    return df


def final_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """Each run's metrics at its last evaluated step."""
    last = df.groupby("run")["step"].transform("max")
    return df[df["step"] == last]


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of each final metric, with seed and failure counts."""
    runs = df.groupby(["method", "dataset", "run"])["status"].first().reset_index()
    counts = runs.groupby(["method", "dataset"]).agg(
        runs=("run", "size"), failed=("status", lambda s: int((s != "ok").sum()))
    )
    fin = final_metrics(df[df["status"] == "ok"])
    fin = fin[fin["metric"].isin(SUMMARY)]
    stats = fin.groupby(["method", "dataset", "metric"])["value"].agg(["mean", "std"])
    wide = stats.unstack("metric")
    wide.columns = [f"{metric}_{stat}" for stat, metric in wide.columns]
    return counts.join(wide, how="left")


def markdown(df: pd.DataFrame) -> str:
    s = summary(df)
    metrics = [m for m in SUMMARY if f"{m}_mean" in s.columns]
    lines = []
    for dataset in sorted(s.index.get_level_values("dataset").unique()):
        sub = s.xs(dataset, level="dataset")
        lines.append(f"\n### {dataset}\n")
        header = ["method", "seeds (failed)", *metrics]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for method, row in sub.iterrows():
            cells = [method, f"{int(row['runs'])} ({int(row['failed'])})"]
            for m in metrics:
                mean, std = row[f"{m}_mean"], row[f"{m}_std"]
                if pd.isna(mean):
                    cells.append("-")
                elif pd.isna(std):
                    cells.append(f"{mean:.3g}")
                else:
                    cells.append(f"{mean:.3g} ± {std:.2g}")
            lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        "\nFinal evaluation of each run; mean ± std over seeds (std of one seed: none). "
        "modes_covered and high_quality_pct: higher is better; intra_mode_kl "
        "(KL(true || fitted) per mode) and reverse_kl (KL(gen || data) over modes): lower."
    )
    return "\n".join(lines).lstrip("\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mcbench report` (the CLI delegates the whole command here)."""
    parser.add_argument("results_dir")


def run(args: argparse.Namespace) -> None:
    print(markdown(load(Path(args.results_dir))))
