"""Mixture metrics against values known in closed form."""

import math

import numpy as np
import pytest
import torch

from mcbench.datasets import get_dataset
from mcbench.errors import McbenchError
from mcbench.metrics.mixtures import gaussian_kl, mixture_metrics

P_HQ = 1 - math.exp(-4.5)  # P(|x - mu| <= 3 std) for an isotropic 2-D Gaussian


def exact(name: str, n: int, seed: int = 0, scale: float = 1.0) -> tuple[np.ndarray, object]:
    """n samples of dataset `name`, each mode's spread scaled by `scale`."""
    ds = get_dataset(name)
    g = np.random.default_rng(seed)
    idx = g.integers(ds.n_modes, size=n)
    x = ds.centers[idx] + scale * ds.std * g.standard_normal((n, 2))
    return x, ds


@pytest.mark.parametrize("name", ["ring", "grid", "ring-veegan", "grid-veegan"])
def test_exact_samples(name):
    n = 200_000
    x, ds = exact(name, n)
    m = ds.evaluate(x)
    tol = 5 * math.sqrt(P_HQ * (1 - P_HQ) / n)
    assert m["high_quality_pct"] == pytest.approx(100 * P_HQ, abs=100 * tol)
    assert m["modes_covered"] == ds.n_modes
    assert m["kl_modes"] == ds.n_modes
    assert 0 <= m["intra_mode_kl"] < 0.01
    assert 0 <= m["reverse_kl"] < 0.01


def test_one_mode():
    ds = get_dataset("grid")
    g = np.random.default_rng(1)
    x = ds.centers[37] + ds.std * g.standard_normal((50_000, 2))
    m = ds.evaluate(x)
    assert m["modes_covered"] == 1
    # All high-quality mass on one of k modes: KL(p_gen || uniform) = log k.
    assert m["reverse_kl"] == pytest.approx(math.log(ds.n_modes), abs=1e-12)
    assert m["kl_modes"] == 1  # the 99 empty modes have no fit and are left out


@pytest.mark.parametrize("s", [0.5, 0.8, 1.5, 2.0])
def test_scaled_std_gives_analytic_kl(s):
    # grid-veegan modes are 40 std apart, so nearest-mode assignment cuts no tail.
    x, ds = exact("grid-veegan", 200_000, seed=2, scale=s)
    m = ds.evaluate(x)
    # KL(N(0, std^2 I) || N(0, s^2 std^2 I)) in 2-D = 1/s^2 - 1 + 2 log s
    assert m["intra_mode_kl"] == pytest.approx(1 / s**2 - 1 + 2 * math.log(s), abs=0.01)
    assert m["high_quality_pct"] == pytest.approx(100 * (1 - math.exp(-4.5 / s**2)), abs=0.3)


def test_reverse_kl_of_known_histogram():
    ds = get_dataset("ring")
    x = np.concatenate([np.repeat(ds.centers[[0]], 300, 0), np.repeat(ds.centers[[3]], 100, 0)])
    p = np.array([0.75, 0.25])
    m = ds.evaluate(x)
    assert m["reverse_kl"] == pytest.approx(float((p * np.log(p * 8)).sum()), abs=1e-12)
    assert m["high_quality_pct"] == 100
    # 400 samples, expected 50 per mode, threshold 10: both occupied modes count.
    assert m["modes_covered"] == 2


def test_coverage_threshold_is_twenty_percent_of_expected():
    ds = get_dataset("ring")
    # 8,000 samples -> expected 1,000 per mode -> a mode needs at least 200.
    counts = [199, 200, 7601]
    x = np.concatenate([np.repeat(ds.centers[[i]], c, 0) for i, c in enumerate(counts)])
    assert ds.evaluate(x)["modes_covered"] == 2


@pytest.mark.parametrize("k, used", [(9, 24), (10, 25)])
def test_modes_with_too_few_samples_leave_the_kl_average(k, used):
    x, ds = exact("grid-veegan", 50_000, seed=3)
    g = np.random.default_rng(4)
    last = np.linalg.norm(x - ds.centers[24], axis=1) < 1
    few = ds.centers[24] + ds.std * g.standard_normal((k, 2))
    m = mixture_metrics(np.concatenate([x[~last], few]), ds.centers, ds.std, kl_min_samples=10)
    assert m["kl_modes"] == used


def test_no_fit_at_all_gives_nan_kl():
    ds = get_dataset("grid-veegan")
    m = mixture_metrics(ds.centers[[0]].repeat(5, 0) + 0.01, ds.centers, ds.std)
    assert m["kl_modes"] == 0 and math.isnan(m["intra_mode_kl"])


def test_no_high_quality_sample_gives_nan_reverse_kl():
    ds = get_dataset("ring")
    m = ds.evaluate(np.zeros((100, 2)))
    assert m["high_quality_pct"] == 0 and m["modes_covered"] == 0
    assert math.isnan(m["reverse_kl"])


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(3, 3, 3, generator=g, dtype=torch.float64)
    c0 = a @ a.transpose(1, 2) + 0.5 * torch.eye(3)
    c1 = b @ b.transpose(1, 2) + 0.5 * torch.eye(3)
    m0, m1 = torch.randn(3, 3, generator=g, dtype=torch.float64), torch.zeros(3, 3)
    ref = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(m0, c0),
        torch.distributions.MultivariateNormal(m1.double(), c1),
    )
    ours = gaussian_kl(m0.numpy(), c0.numpy(), m1.double().numpy(), c1.numpy())
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-10)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((10, 3)), np.zeros(10), np.zeros((0, 2)), np.array([[0.0, np.nan]])],
)
def test_bad_samples_are_rejected(bad):
    with pytest.raises(McbenchError):
        get_dataset("ring").evaluate(bad)


def test_evaluation_returns_exactly_the_declared_metrics():
    """What evaluate returns is what the dataset declares (reports read the declarations)."""
    from mcbench.metrics import MODE_METRICS, metric_spec, mode_metrics

    x, ds = exact("ring", 2000)
    assert set(ds.evaluate(x)) == set(ds.metrics()) == {s.name for s in ds.metric_specs()}
    assert set(mode_metrics(np.arange(10), 10)) == set(MODE_METRICS)
    assert all(metric_spec(m) is not None for m in MODE_METRICS)
