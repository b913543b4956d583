"""Mode counts read near the 20% coverage line are flagged, in the metric and the report."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mcbench.metrics.mixtures import NEAR_FACTOR, mixture_metrics
from mcbench.metrics.registry import metric_spec
from mcbench.report import build


def _on_modes(counts: list[int], centers: np.ndarray) -> np.ndarray:
    """Samples exactly on mode centres (all high quality), counts[i] on mode i."""
    return np.concatenate([np.repeat(centers[i : i + 1], c, axis=0) for i, c in enumerate(counts)])


CENTERS = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])


def test_counts_near_the_threshold_are_counted():
    # N = 1000 (400 far-away samples included), k = 4: threshold 0.2 * 1000 / 4 = 50.
    counts = [50, 99, 100, 24]  # at it, just under 2x, at 2x (not near), under half
    far = np.full((1000 - sum(counts), 2), 50.0)
    x = np.concatenate([_on_modes(counts, CENTERS), far])
    m = mixture_metrics(x, CENTERS, std=0.05)
    assert m["modes_covered"] == 3  # 50, 99, 100 >= 50
    assert m["modes_near_threshold"] == 2  # 50 and 99 lie in [25, 100)
    counts = [25, 24, 500, 51]  # half of it counts as near; just below half does not
    x = np.concatenate([_on_modes(counts, CENTERS), np.full((400, 2), 50.0)])
    m = mixture_metrics(x, CENTERS, std=0.05)
    assert m["modes_covered"] == 2 and m["modes_near_threshold"] == 2
    assert NEAR_FACTOR == 2.0


def test_a_clear_cover_is_not_flagged():
    x = _on_modes([250, 250, 250, 250], CENTERS)  # threshold 50: every mode 5x above it
    m = mixture_metrics(x, CENTERS, std=0.05)
    assert m["modes_covered"] == 4 and m["modes_near_threshold"] == 0


def _agg(near_mean: float) -> pd.DataFrame:
    rows = []
    for metric, mean in (("modes_covered", 8.0), ("modes_near_threshold", near_mean)):
        rows.append(
            {
                "method": "lbt",
                "dataset": "ring",
                "metric": metric,
                "mean": mean,
                "std": 0.0,
                "sem": 0.0,
                "n": 3,
                "best": False,
                "runs": 3,
                "failed": 0,
                "ci95_low": mean,
                "ci95_high": mean,
            }
        )
    return pd.DataFrame(rows)


def test_report_flags_the_cell_and_says_why():
    assert metric_spec("modes_covered").flagged_by == "modes_near_threshold"
    flagged = build.final_table(_agg(1.0), "ring")
    clean = build.final_table(_agg(0.0), "ring")
    col = flagged.header.index("modes_covered")
    assert flagged.rows[0][col].text.endswith(build.NEAR)
    assert not clean.rows[0][col].text.endswith(build.NEAR)
    assert f"{build.NEAR} on " in flagged.caption and "not a finding" in flagged.caption
    assert build.NEAR not in clean.caption  # no flagged cell, no note
