"""Fréchet distance and KID on features: closed forms (diagonal and full Gaussians,
point masses, a hand-computed MMD, Gaussian moments), identical sets; and on the MNIST
classifier's penultimate features for Stacked MNIST (a small untrained CNN stands in)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import scipy.linalg
import torch

from mcbench.datasets import classifier as clf_mod
from mcbench.datasets.mnist_source import IDX_FILES
from mcbench.datasets.stacked_mnist import StackedMNIST
from mcbench.errors import McbenchError
from mcbench.metrics import metric_spec
from mcbench.metrics.features import (
    CLASSIFIER_FEATURE_METRICS,
    FrechetReference,
    KidReference,
    frechet_distance,
    gaussian_stats,
    kid,
    kid_subsets,
    mmd2_unbiased,
    reference_indices,
)
from mcbench.metrics.prdc import PRDC_METRICS

# -- Fréchet distance -----------------------------------------------------------------------


def test_frechet_distance_of_diagonal_gaussians():
    """Commuting (diagonal) covariances: ||mu1 - mu2||^2 + sum_i (s1_i - s2_i)^2."""
    g = np.random.default_rng(0)
    mu1, mu2 = g.normal(size=6), g.normal(size=6)
    s1, s2 = g.uniform(0.3, 2, 6), g.uniform(0.3, 2, 6)
    want = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    got = frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2))
    assert got == pytest.approx(want, rel=1e-12)
    assert frechet_distance(mu1, np.eye(6), mu1 + 3, np.eye(6)) == pytest.approx(54.0)


def test_frechet_distance_of_full_covariances_against_scipy_sqrtm():
    """tr((S1 S2)^(1/2)) from scipy's general matrix square root, an independent route."""
    g = np.random.default_rng(1)
    a, b = g.normal(size=(7, 7)), g.normal(size=(7, 7))
    s1, s2 = a @ a.T + 0.1 * np.eye(7), b @ b.T
    mu1, mu2 = g.normal(size=7), g.normal(size=7)
    cross = np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    want = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9)
    # symmetric in its arguments, 0 for one Gaussian (never negative from rounding)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(want, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) >= 0.0


def test_frechet_distance_of_samples():
    """Identical sets: 0. Large samples of N(0, I) and N(m, 4 I) in 3-D: near the closed
    form ||m||^2 + 3 (2 - 1)^2."""
    g = np.random.default_rng(2)
    x = g.standard_normal((20_000, 3))
    ref = FrechetReference.of(x)
    assert ref(x.copy()) == pytest.approx(0.0, abs=1e-9)
    m = np.array([1.0, -2.0, 0.5])
    y = m + 2 * g.standard_normal((20_000, 3))
    assert ref(y) == pytest.approx((m**2).sum() + 3.0, rel=0.03)
    mu, sigma = gaussian_stats(y)
    np.testing.assert_allclose(sigma, np.cov(y, rowvar=False), rtol=1e-10)
    assert ref.distance(mu, sigma) == ref(y)


def test_frechet_bad_input():
    with pytest.raises(McbenchError, match="does not match"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(McbenchError, match="width 3"):
        FrechetReference(np.zeros(2), np.eye(2)).distance(np.zeros(3), np.eye(3))
    with pytest.raises(McbenchError, match="at least 2"):
        gaussian_stats(np.zeros((1, 4)))


# -- KID ----------------------------------------------------------------------------------


def test_mmd_of_a_hand_computed_case():
    """X = {0, 1}, Y = {2, 3} in 1-D, k(x, y) = (xy + 1)^3: the off-diagonal sums are
    2 k(0, 1) = 2 and 2 k(2, 3) = 686, the cross sum 1 + 1 + 27 + 64 = 93:
    MMD^2_u = (2 + 686) / 2 - 2 * 93 / 4 = 297.5."""
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0], [3.0]])
    assert mmd2_unbiased(x, y) == pytest.approx(297.5, rel=1e-12)
    assert kid(x, y, subsets=3, subset_size=2) == pytest.approx((297.5, 0.0), rel=1e-12)


def test_kid_of_point_masses():
    """All of X at a 1_d, all of Y at b 1_d: x.y/d = ab, so
    KID = (a^2 + 1)^3 + (b^2 + 1)^3 - 2 (ab + 1)^3 exactly, whatever the subsets."""
    a, b, d = 0.5, -0.25, 16
    x, y = np.full((40, d), a), np.full((30, d), b)
    want = (a * a + 1) ** 3 + (b * b + 1) ** 3 - 2 * (a * b + 1) ** 3
    mean, sd = kid(x, y, subsets=4, subset_size=20)
    assert mean == pytest.approx(want, rel=1e-6) and sd == pytest.approx(0.0, abs=1e-6)


def test_kid_of_identical_sets_is_the_unbiased_estimators_value():
    """One subset holding all of X on both sides: MMD^2_u = (2/m)(mean off-diagonal k -
    mean diagonal k), slightly negative; the biased estimator would give 0."""
    x = np.random.default_rng(3).standard_normal((50, 4))
    k = (x @ x.T / 4 + 1) ** 3
    m = len(x)
    off = (k.sum() - np.trace(k)) / (m * (m - 1))
    want = 2 / m * (off - np.trace(k) / m)
    assert kid(x, x.copy(), subsets=2, subset_size=m)[0] == pytest.approx(want, rel=1e-6)
    assert want < 0


def test_kid_against_the_population_value_of_two_gaussians():
    """1-D, k(x, y) = (xy + 1)^3: E k(x, y) = m3x m3y + 3 m2x m2y + 3 m1x m1y + 1 for
    independent x, y. X ~ N(0, 1) (moments 0, 1, 0) and Y ~ N(1, 1) (1, 2, 4):
    E k(x, x') = 4, E k(y, y') = 32, E k(x, y) = 7, MMD^2 = 4 + 32 - 14 = 22. One
    distribution: 0. The estimator is unbiased; 40 subsets of 1,000 bring it within
    about 0.5 of 22 (sd over subsets about 2)."""
    g = np.random.default_rng(4)
    x, y, x2 = g.normal(0, 1, (8000, 1)), g.normal(1, 1, (8000, 1)), g.normal(0, 1, (8000, 1))
    mean, sd = kid(x, y, subsets=40)
    assert mean == pytest.approx(22.0, abs=4 * sd / math.sqrt(40) + 0.1)
    same, sd0 = kid(x, x2, subsets=40)
    assert abs(same) < 4 * sd0 / math.sqrt(40) + 1e-3


def test_kid_shortcut_when_the_generated_set_is_one_subset():
    """With no more generated samples than a subset holds, the whole set is every
    subset: the kernel-sum shortcut equals MMD^2_u on the documented real subsets."""
    g = np.random.default_rng(5)
    real, fake = g.standard_normal((90, 5)), 0.5 + g.standard_normal((30, 5))
    got = KidReference(real, subsets=6, subset_size=40)(fake)
    subsets = kid_subsets(90, 30, 6, stream=0)
    x, y = torch.from_numpy(real), torch.from_numpy(fake)
    values = [mmd2_unbiased(x[torch.from_numpy(ix)], y) for ix in subsets]
    assert got == pytest.approx((np.mean(values), np.std(values)), rel=1e-9)
    # the general route: generated subsets drawn from their own stream
    more = 0.5 + g.standard_normal((70, 5))
    got = KidReference(real, subsets=6, subset_size=40)(more)
    fake_sets = kid_subsets(70, 40, 6, stream=1)
    real_sets = kid_subsets(90, 40, 6, stream=0)
    y = torch.from_numpy(more)
    values = [
        mmd2_unbiased(x[torch.from_numpy(a)], y[torch.from_numpy(b)])
        for a, b in zip(real_sets, fake_sets, strict=True)
    ]
    assert got == pytest.approx((np.mean(values), np.std(values)), rel=1e-9)


def test_kid_bad_input():
    x = np.zeros((10, 3))
    with pytest.raises(McbenchError, match="subset_size >= 2"):
        kid(x, x, subset_size=1)
    with pytest.raises(McbenchError, match="differ in width"):
        kid(x, np.zeros((10, 2)))
    with pytest.raises(McbenchError, match="at least 2"):
        kid(x, np.zeros((1, 3)))
    with pytest.raises(McbenchError, match="NaN"):
        kid(x, np.full((4, 3), np.inf))


def test_reference_indices():
    assert list(reference_indices(5, 10, 0)) == [0, 1, 2, 3, 4]
    idx = reference_indices(100, 10, 0)
    assert len(set(idx)) == 10 and list(idx) == sorted(idx) and idx.max() < 100
    assert list(idx) == list(reference_indices(100, 10, 0))


# -- on the MNIST classifier's features (Stacked MNIST) ----------------------------------------


def write_idx(folder, n_train: int = 60, n_test: int = 20) -> None:
    """Random uint8 'digits' as an IDX folder (labels cycle 0..9)."""
    folder.mkdir(parents=True)
    g = np.random.default_rng(0)
    for key, stem in IDX_FILES.items():
        n = n_train if key.startswith("train") else n_test
        shape = (n, 28, 28) if key.endswith("images") else (n,)
        arr = g.integers(0, 256, shape) if key.endswith("images") else np.arange(n) % 10
        head = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
        (folder / stem).write_bytes(head + arr.astype(np.uint8).tobytes())


N_STACKED = 200


@pytest.fixture
def small_stacked(tmp_path, monkeypatch):
    """A 200-image Stacked MNIST on 80 random 'digits', read by an untrained CNN (the
    metrics' plumbing, not the classifier's accuracy, is under test)."""
    monkeypatch.setenv("MCBENCH_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("MCBENCH_CACHE", str(tmp_path / "cache"))
    write_idx(tmp_path / "mnist")
    torch.manual_seed(0)
    clf = clf_mod.Classifier(clf_mod.MnistCNN(), {})
    calls = []
    embed = clf.embed
    monkeypatch.setattr(clf, "embed", lambda x: calls.append(len(x)) or embed(x))
    module = sys.modules[StackedMNIST.__module__]
    monkeypatch.setattr(module, "get_classifier", lambda src: clf)
    return StackedMNIST(folder=tmp_path / "mnist", n=N_STACKED), clf, calls


def test_embed_reads_the_same_digits_as_predict():
    torch.manual_seed(1)
    net = clf_mod.MnistCNN()
    clf = clf_mod.Classifier(net, {})
    x = torch.rand(6, 3, 28, 28)
    digits, feats = clf.embed(x)
    np.testing.assert_array_equal(digits, clf.predict(x))
    assert feats.shape == (6, 3 * 128) and feats.dtype == torch.float32
    with torch.no_grad():
        h = net.eval().features(x[:, 2:3])
        assert torch.equal(net.head(h), net(x[:, 2:3]))
    torch.testing.assert_close(feats[:, 256:], h)  # channel 2's block
    assert (feats >= 0).all()  # after the ReLU


def test_stacked_feature_metrics_on_real_and_collapsed_images(small_stacked):
    """The reference's own images: FD 0, PRDC all 1 (identical sets); the reference is
    embedded once. One real image repeated: each copy lies in its own real ball
    (precision 1) and in the same c balls, so coverage = c / N and density = c / k;
    the copies' own balls have radius 0 and hold nothing (recall 0); FD is that of a
    point mass."""
    ds, clf, calls = small_stacked
    real = ds.gather(torch.arange(N_STACKED)).float() / 255
    m = ds.evaluate(real)
    assert set(m) == set(ds.metrics())
    assert set(CLASSIFIER_FEATURE_METRICS) | set(PRDC_METRICS) <= set(m)
    assert m["fd_classifier"] == pytest.approx(0.0, abs=1e-6)
    assert {k: m[k] for k in PRDC_METRICS} == dict.fromkeys(PRDC_METRICS, 1.0)
    assert m["kid_classifier"] < 0  # identical sets: the unbiased estimator's small negative
    one = ds.evaluate(ds.gather(torch.zeros(N_STACKED, dtype=torch.long)))
    assert calls == [N_STACKED] * 3  # evaluated twice, the reference embedded once
    assert one["recall"] == 0.0 and one["precision"] == 1.0
    c = one["coverage"] * N_STACKED
    assert c >= 1 and c == round(c) and one["density"] == pytest.approx(c / 5)
    # a point mass f0 against N(mu, S): FD = ||f0 - mu||^2 + tr(S)
    feats = clf_mod.Classifier.embed(clf, real)[1].double().numpy()  # not counted
    mu, sigma = gaussian_stats(feats)
    want = ((feats[0] - mu) ** 2).sum() + np.trace(sigma)
    assert one["fd_classifier"] == pytest.approx(want, rel=1e-6)
    assert one["kid_classifier"] > 0


def test_classifier_feature_declarations():
    fd, kd = (metric_spec(n) for n in CLASSIFIER_FEATURE_METRICS)
    assert fd.direction == kd.direction == "lower"
    assert fd.role == "quality" and kd.role == "detail"
