"""The two mode-count rules on sample sets where they disagree.

LBT's rule (`modes_covered`, all N samples): a mode counts with at least 20% of N / k
high-quality samples, high quality = Euclidean distance to the nearest centre <= 3 std.
VEEGAN/PacGAN's rule (`modes_covered_any`, `high_quality_pct_2500`, `reverse_kl_2500`,
first 2,500 samples): a mode counts with one high-quality sample; `authors_evaluation`
below re-implements it from its description, one sample and one mode at a time.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mcbench.datasets import get_dataset
from mcbench.metrics.mixtures import VEEGAN_PACGAN_SAMPLES, mixture_metrics

N = VEEGAN_PACGAN_SAMPLES


def authors_evaluation(x: np.ndarray, means: np.ndarray, std: float) -> dict[str, float]:
    """VEEGAN paper 5.1 / PacGAN's MetricLogger, as described: a sample's distance to a
    mode is sqrt(sum((x - mean)^2 / var)) with the diagonal variance; it belongs to the
    nearest mode (the first on a tie) and is high quality when that distance is strictly
    below 3; a mode is covered by one high-quality sample."""
    var = np.array([std**2, std**2])
    hist = np.zeros(len(means))
    for i in range(len(x)):
        best, best_j = math.inf, -1
        for j in range(len(means)):
            d = x[i] - means[j]
            dis = math.sqrt(np.sum(d * d / var))
            if dis < best:
                best, best_j = dis, j
        if best < 3:
            hist[best_j] += 1
    p = hist[hist > 0] / hist.sum() if hist.sum() else np.array([])
    return {
        "modes_covered_any": float((hist > 0).sum()),
        "high_quality_pct_2500": 100.0 * hist.sum() / len(x),
        "reverse_kl_2500": float((p * np.log(p * len(means))).sum()) if len(p) else math.nan,
    }


def check_against_authors(x: np.ndarray, centers: np.ndarray, std: float) -> dict[str, float]:
    m = mixture_metrics(x, centers, std)
    ref = authors_evaluation(np.asarray(x, dtype=float)[:N], centers, std)
    assert m["modes_covered_any"] == ref["modes_covered_any"]
    assert m["high_quality_pct_2500"] == ref["high_quality_pct_2500"]
    if math.isnan(ref["reverse_kl_2500"]):
        assert math.isnan(m["reverse_kl_2500"])
    else:
        assert m["reverse_kl_2500"] == pytest.approx(ref["reverse_kl_2500"], abs=1e-12)
    return m


def test_spread_evenly_at_low_quality():
    """Uniform over [-3, 3]^2 around the ring: about 20 high-quality samples per mode of
    2,500, below LBT's threshold (62.5) everywhere, but at least one in every mode."""
    ds = get_dataset("ring")
    x = np.random.default_rng(0).uniform(-3, 3, size=(N, 2))
    m = check_against_authors(x, ds.centers, ds.std)
    assert m["modes_covered"] == 0 and m["modes_covered_any"] == 8


def test_collapsed_with_stray_samples():
    """Everything on mode 3 but one good sample on each other mode: LBT 1, VEEGAN 8."""
    ds = get_dataset("ring")
    g = np.random.default_rng(1)
    stray = ds.centers + 0.5 * ds.std * g.standard_normal((8, 2))
    x = np.concatenate([stray, ds.centers[3] + ds.std * g.standard_normal((N - 8, 2))])
    m = check_against_authors(x, ds.centers, ds.std)
    assert m["modes_covered"] == 1 and m["modes_covered_any"] == 8


def test_single_collapsed_mode():
    ds = get_dataset("grid-veegan")
    x = ds.centers[7] + 0.5 * ds.std * np.random.default_rng(2).standard_normal((N, 2))
    m = check_against_authors(x, ds.centers, ds.std)
    assert m["modes_covered"] == 1 and m["modes_covered_any"] == 1
    assert m["reverse_kl_2500"] == pytest.approx(math.log(25))


def test_exactly_three_std():
    """At exactly 3 std (0.75 from integer centres, std 0.25: exact in binary) LBT's <=
    counts the sample, VEEGAN/PacGAN's strict < does not."""
    centers = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    x = np.repeat(centers + np.array([0.75, 0.0]), N // 3 + 1, axis=0)[:N]
    m = check_against_authors(x, centers, 0.25)
    assert m["high_quality_pct"] == 100 and m["modes_covered"] == 3
    assert m["high_quality_pct_2500"] == 0 and m["modes_covered_any"] == 0
    assert math.isnan(m["reverse_kl_2500"])


@pytest.mark.parametrize("name", ["ring", "grid", "ring-veegan", "grid-veegan"])
def test_three_std_on_each_dataset(name):
    """Samples at 3 std (and just inside and outside) of every mode, along both axes and
    a diagonal: whatever floating point makes of the boundary, both agree."""
    ds = get_dataset(name)
    steps = np.array([[3, 0], [0, -3], [3 / math.sqrt(2), 3 / math.sqrt(2)]]) * ds.std
    offsets = np.concatenate([steps * f for f in (1.0, 1 - 1e-12, 1 + 1e-12)])
    x = (ds.centers[:, None, :] + offsets[None]).reshape(-1, 2)
    x = np.resize(x, (N, 2))  # repeated to 2,500
    check_against_authors(x, ds.centers, ds.std)


@pytest.mark.parametrize("seed, scale", [(3, 1.0), (4, 2.0), (5, 4.0)])
def test_generators_of_every_quality(seed, scale):
    """Exact and widened mixtures, with some samples anywhere: equal to the authors'."""
    ds = get_dataset("grid-veegan")
    g = np.random.default_rng(seed)
    x = ds.centers[g.integers(25, size=N)] + scale * ds.std * g.standard_normal((N, 2))
    x[::7] = g.uniform(-5, 5, size=x[::7].shape)
    check_against_authors(x, ds.centers, ds.std)


def test_only_the_first_2500_samples_count():
    """The VEEGAN/PacGAN numbers read the first 2,500 samples; LBT's rule all of them."""
    ds = get_dataset("ring")
    g = np.random.default_rng(6)
    first = ds.centers[0] + ds.std * g.standard_normal((N, 2))
    rest = ds.centers[g.integers(8, size=4 * N)] + ds.std * g.standard_normal((4 * N, 2))
    m = check_against_authors(np.concatenate([first, rest]), ds.centers, ds.std)
    assert m["modes_covered_any"] == 1 and m["modes_covered"] == 8


def test_fewer_than_2500_samples_leave_the_rule_undefined():
    ds = get_dataset("ring")
    m = ds.evaluate(np.repeat(ds.centers, 100, axis=0))
    assert m["modes_covered"] == 8
    for name in ("modes_covered_any", "high_quality_pct_2500", "reverse_kl_2500"):
        assert math.isnan(m[name])
