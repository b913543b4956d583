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


# -- intra-mode KL on degenerate modes ------------------------------------------------

POINT_MASS_KL = 1e6 - 1 - math.log(1e6)  # per 2-D mode: 2 axes x (1/a - 1 + ln a) / 2


def ring_point_masses(offset_std: float, per_mode: int = 500) -> tuple[np.ndarray, object]:
    """`per_mode` copies of one point per ring mode, `offset_std` std off its centre."""
    ds = get_dataset("ring")
    d = np.array([0.6, 0.8])  # a unit direction, neither radial nor tangential
    return np.repeat(ds.centers + offset_std * ds.std * d, per_mode, axis=0), ds


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_point_mass_on_each_centre_has_the_floor_kl(dtype):
    """A point mass: every covariance eigenvalue raised to (1e-3 std)^2, KL known."""
    x, ds = ring_point_masses(0.0)
    m = ds.evaluate(x.astype(dtype))
    assert m["kl_modes"] == 8
    assert m["intra_mode_kl"] == pytest.approx(POINT_MASS_KL, rel=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_point_mass_just_inside_three_std_is_finite_and_positive(dtype):
    """The case a one-pass covariance got wrong (about -1.7e12): one point 2.999 std off
    each ring mode. Now the floor's KL plus the mean offset's Mahalanobis term."""
    x, ds = ring_point_masses(2.999)
    m = ds.evaluate(x.astype(dtype))
    assert m["high_quality_pct"] == 100 and m["modes_covered"] == 8
    expect = POINT_MASS_KL + 0.5 * 2.999**2 / 1e-6
    assert math.isfinite(m["intra_mode_kl"]) and m["intra_mode_kl"] > 0
    assert m["intra_mode_kl"] == pytest.approx(expect, rel=1e-5)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tiny_mode_is_finite_and_non_negative(k, dtype):
    """With kl_min_samples lowered to 1, a mode of 1 or 2 samples enters the average:
    finite (floored covariance), never negative; left out by default."""
    ds = get_dataset("grid-veegan")
    g = np.random.default_rng(7)
    x = ds.centers[g.integers(24, size=20_000)] + ds.std * g.standard_normal((20_000, 2))
    tiny = ds.centers[24] + ds.std * g.standard_normal((k, 2))
    xs = np.concatenate([x, tiny]).astype(dtype)
    m = mixture_metrics(xs, ds.centers, ds.std, kl_min_samples=1)
    assert m["kl_modes"] == 25 and math.isfinite(m["intra_mode_kl"]) and m["intra_mode_kl"] >= 0
    assert mixture_metrics(xs, ds.centers, ds.std)["kl_modes"] == 24
    with pytest.raises(McbenchError, match="kl_min_samples"):
        mixture_metrics(xs, ds.centers, ds.std, kl_min_samples=0)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_far_from_the_origin_matches_the_centred_mixture(scale):
    """Centres shifted by 1e6: the same numbers as around the origin (float64 input),
    finite and >= 0 for float32 input (whose rounding at 1e6 is 0.06, above the std)."""
    x, ds = exact("grid-veegan", 50_000, seed=8, scale=scale)
    shift = np.array([1e6, -1e6])
    near = mixture_metrics(x, ds.centers, ds.std)
    far = mixture_metrics(x + shift, ds.centers + shift, ds.std)
    assert far["intra_mode_kl"] == pytest.approx(near["intra_mode_kl"], rel=1e-6, abs=1e-9)
    assert {k: v for k, v in far.items() if k != "intra_mode_kl"} == pytest.approx(
        {k: v for k, v in near.items() if k != "intra_mode_kl"}
    )
    f32 = mixture_metrics((x + shift).astype(np.float32), ds.centers + shift, ds.std)
    assert math.isfinite(f32["intra_mode_kl"]) and f32["intra_mode_kl"] >= 0
    points = np.repeat(ds.centers + shift, 20, axis=0)
    for dtype in (np.float64, np.float32):
        m = mixture_metrics(points.astype(dtype), ds.centers + shift, ds.std)
        assert math.isfinite(m["intra_mode_kl"]) and m["intra_mode_kl"] >= 0


def test_exact_fit_is_never_negative():
    """Samples whose fitted Gaussian is the true one up to rounding: KL >= 0, not -1e-16."""
    ds = get_dataset("ring")
    s = ds.std * np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    x = (ds.centers[:, None, :] + s[None] * math.sqrt(3 / 4)).reshape(-1, 2)
    m = ds.evaluate(x, kl_min_samples=4)  # each mode's fit: mean = centre, cov = std^2 I
    assert 0 <= m["intra_mode_kl"] < 1e-12


def test_non_degenerate_value_is_the_closed_form():
    """On a fit well above the floor the value is gaussian_kl of the plain sample mean and
    unbiased covariance, as before the floor and the centring."""
    ds = get_dataset("grid-veegan")
    g = np.random.default_rng(9)
    idx = g.integers(25, size=30_000)
    a = np.array([[1.5, 0.4], [0.0, 0.7]])  # anisotropic, tilted, offset modes
    x = ds.centers[idx] + ds.std * (g.standard_normal((30_000, 2)) @ a.T + 0.3)
    m = ds.evaluate(x)
    kls = []
    for j in range(25):
        xj = x[idx == j]
        mu, cov = xj.mean(0), np.cov(xj.T)
        kls.append(gaussian_kl(ds.centers[j], ds.std**2 * np.eye(2), mu, cov))
    assert m["intra_mode_kl"] == pytest.approx(float(np.mean(kls)), rel=1e-9)
