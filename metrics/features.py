"""Distances between sets of features: the Fréchet distance and the kernel distance (KID).

Fréchet distance (Heusel et al., 2017, "GANs Trained by a Two Time-Scale Update Rule
Converge to a Local Nash Equilibrium", NeurIPS: the FID): each set is summarised
by the Gaussian with its mean and covariance, and
    FD = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2)),
the squared 2-Wasserstein distance between the two Gaussians. tr((S_1 S_2)^(1/2)) is the
sum of the square roots of the eigenvalues of S_1 S_2, which are those of the symmetric
PSD matrix R S_2 R with R = S_1^(1/2) (same spectrum): two symmetric eigendecompositions,
no complex matrix square root, and R is computed once for a fixed reference set.
Covariances use the divisor N - 1, as the FID reference code (np.cov).

Kernel distance (Binkowski et al., 2018, "Demystifying MMD GANs", ICLR: the KID):
the unbiased estimator of the squared MMD with the cubic polynomial kernel
k(x, y) = (x . y / d + 1)^3, on m samples a side,
    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / m^2,
averaged over random subsets of m = 1,000 (fewer when a set is smaller) drawn without
replacement from a seeded generator. It is 0 in expectation for one distribution (it can
be negative); for one set taken whole on both sides it is
(2 / m) (mean off-diagonal k - mean diagonal k), slightly below 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mcbench.errors import McbenchError
from mcbench.metrics.prdc import PRDC_SAMPLES, PrdcReference
from mcbench.metrics.registry import MetricSpec, register_metric

# KID subsets of 1,000 (Binkowski et al. 2018; torch-fidelity's kid_subset_size).
KID_SUBSET_SIZE = 1_000
KID_SEED = 2018
# On the MNIST CNN's features: real reference images (the embedded digits' 4,000
# training images, or a fixed-seed draw of 5,000 from a larger set) and KID subsets
# (10, not torch-fidelity's 100: Stacked MNIST evaluates 26,000 samples at every
# evaluation, and 10 subsets of 1,000 add about a second on one CPU core).
CLASSIFIER_REFERENCE = 5_000
CLASSIFIER_KID_SUBSETS = 10

_CLF = (
    "penultimate-layer features (ReLU, 128 per channel; Stacked MNIST: the three "
    "channels' concatenated, 384) of the harness's MNIST CNN, the N generated samples "
    f"against up to {CLASSIFIER_REFERENCE:,} real training images (fixed seed)"
)
FD_CLASSIFIER = MetricSpec(
    "fd_classifier",
    "lower",
    "FD (MNIST CNN)",
    f"Fréchet distance between Gaussians fitted to the {_CLF}; FID's formula on the "
    "harness's own offline classifier, so not comparable to published FIDs.",
    "Heusel et al. 2017 (NeurIPS), FID's formula, on mcbench's MNIST classifier",
    lower=0.0,
)
KID_CLASSIFIER = MetricSpec(
    "kid_classifier",
    "lower",
    "KID (MNIST CNN)",
    f"Unbiased MMD^2 with the kernel (x.y/d + 1)^3 on the {_CLF}; mean over "
    f"{CLASSIFIER_KID_SUBSETS} subsets of min(1,000, N) a side; can be slightly negative.",
    "Binkowski et al. 2018 (ICLR), KID's estimator, on mcbench's MNIST classifier",
    role="detail",
)
CLASSIFIER_FEATURE_SPECS: tuple[MetricSpec, ...] = tuple(
    register_metric(s) for s in (FD_CLASSIFIER, KID_CLASSIFIER)
)
CLASSIFIER_FEATURE_METRICS: tuple[str, ...] = tuple(s.name for s in CLASSIFIER_FEATURE_SPECS)


def as_features(x: np.ndarray | torch.Tensor, what: str = "features") -> np.ndarray:
    """(N, D) float64 features with N, D >= 1, all finite."""
    a = (x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)).astype(np.float64)
    if a.ndim != 2 or len(a) == 0 or a.shape[1] == 0:
        raise McbenchError(f"{what} must have shape (N, D) with N, D >= 1, got {a.shape}")
    if not np.isfinite(a).all():
        raise McbenchError(f"{what} contain NaN or inf values")
    return a


def reference_indices(n: int, count: int, seed: int) -> np.ndarray:
    """Which of n real images form a reference of `count`: all when n <= count, else a
    fixed-seed draw without replacement (sorted)."""
    if n <= count:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, count, replace=False))


def gaussian_stats(x: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (divisor N - 1, as np.cov) of features (N, D), N >= 2, in
    float64 (through torch: one product of the centred features, 2.5x np.cov's speed)."""
    a = torch.from_numpy(as_features(x))
    if len(a) < 2:
        raise McbenchError("a covariance needs at least 2 samples")
    mu = a.mean(0)
    c = a - mu
    return mu.numpy(), ((c.T @ c) / (len(a) - 1)).numpy()


def _check_stats(mu: np.ndarray, sigma: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64).reshape(-1)
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if sigma.shape != (len(mu), len(mu)):
        raise McbenchError(f"{what}: covariance {sigma.shape} does not match mean ({len(mu)},)")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise McbenchError(f"{what}: statistics contain NaN or inf values")
    return mu, sigma


def psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance (eigenvalues below 0 from rounding: 0).
    Linear algebra through torch, which keeps to its thread setting: numpy's threaded
    LAPACK was 50x slower on a busy 2-core machine."""
    s = torch.from_numpy(np.asarray(sigma, dtype=np.float64))
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return ((v * w.clamp_min(0.0).sqrt()) @ v.T).numpy()


class FrechetReference:
    """A reference Gaussian (mu, sigma) with its covariance's root computed once."""

    def __init__(self, mu: np.ndarray, sigma: np.ndarray) -> None:
        self.mu, self.sigma = _check_stats(mu, sigma, "reference")
        self.root = torch.from_numpy(psd_sqrt(self.sigma))
        self.trace = float(np.trace(self.sigma))

    @classmethod
    def of(cls, features: np.ndarray | torch.Tensor) -> FrechetReference:
        return cls(*gaussian_stats(features))

    def distance(self, mu: np.ndarray, sigma: np.ndarray) -> float:
        """Fréchet distance between the reference Gaussian and N(mu, sigma); >= 0."""
        mu, sigma = _check_stats(mu, sigma, "statistics")
        if len(mu) != len(self.mu):
            raise McbenchError(f"features of width {len(mu)} against a reference of {len(self.mu)}")
        m = self.root @ torch.from_numpy(sigma) @ self.root
        ev = torch.linalg.eigvalsh((m + m.T) / 2)
        cross = float(ev.clamp_min(0.0).sqrt().sum())
        diff = mu - self.mu
        fd = float(diff @ diff) + self.trace + float(np.trace(sigma)) - 2.0 * cross
        return max(fd, 0.0)  # rounding can leave -1e-12 for equal Gaussians

    def __call__(self, features: np.ndarray | torch.Tensor) -> float:
        return self.distance(*gaussian_stats(features))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)): the Fréchet (2-Wasserstein^2)
    distance between N(mu1, S1) and N(mu2, S2)."""
    return FrechetReference(mu1, sigma1).distance(mu2, sigma2)


def _poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a . b / d + 1)^3: the products in float32 (half the time of float64; a relative
    error near 1e-7, far below KID's spread over subsets), the rest in float64."""
    k = (a.float() @ b.float().T).double()
    return k.div_(a.shape[1]).add_(1.0).pow_(3)


def _off_diagonal_sum(a: torch.Tensor) -> float:
    k = _poly_kernel(a, a)
    return float(k.sum() - k.diagonal().sum())


def _cross_row_sums(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_j k(a_i, b_j) for every row of a, in row chunks (bounded memory)."""
    step = max(1, (1 << 22) // len(b))
    return torch.cat([_poly_kernel(a[s : s + step], b).sum(1) for s in range(0, len(a), step)])


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 of two equal-size sets under the cubic polynomial kernel."""
    m = len(x)
    if len(y) != m or m < 2:
        raise McbenchError(f"MMD^2_u needs two sets of equal size >= 2, got {len(x)} and {len(y)}")
    cross = float(_poly_kernel(x, y).sum())
    return (_off_diagonal_sum(x) + _off_diagonal_sum(y)) / (m * (m - 1)) - 2.0 * cross / m**2


def kid_subsets(n: int, m: int, count: int, stream: int, seed: int = KID_SEED) -> list[np.ndarray]:
    """The `count` index subsets of size m out of n that KID draws for one side (stream 0:
    real, 1: generated), without replacement within a subset. The real side's draws
    depend on the reference alone, so their kernel sums are computed once."""
    rng = np.random.default_rng([seed, stream])
    return [rng.choice(n, m, replace=False) for _ in range(count)]


class KidReference:
    """KID against fixed real features: the real subsets and their kernel sums are
    computed once per subset size. When the generated set is no larger than a subset
    (CIFAR-10's 1,000 evaluation samples), every subset holds all of it: its kernel sum
    is computed once and the cross sums come from one pass of row sums."""

    def __init__(
        self,
        real: np.ndarray | torch.Tensor,
        subsets: int = 100,
        subset_size: int = KID_SUBSET_SIZE,
        seed: int = KID_SEED,
        device: torch.device | str = "cpu",
    ) -> None:
        if not isinstance(subsets, int) or not isinstance(subset_size, int):
            raise McbenchError("KID subsets and subset_size must be integers")
        if subsets < 1 or subset_size < 2:
            raise McbenchError(
                f"KID needs subsets >= 1 and subset_size >= 2, got {subsets}, {subset_size}"
            )
        self.x = torch.from_numpy(as_features(real, "real features")).to(device)
        self.subsets, self.subset_size, self.seed = subsets, subset_size, seed
        self._real: dict[int, list[tuple[np.ndarray, float]]] = {}

    def _real_side(self, m: int) -> list[tuple[np.ndarray, float]]:
        if m not in self._real:
            idx = kid_subsets(len(self.x), m, self.subsets, 0, self.seed)
            self._real[m] = [(ix, _off_diagonal_sum(self.x[torch.from_numpy(ix)])) for ix in idx]
        return self._real[m]

    def __call__(self, fake: np.ndarray | torch.Tensor) -> tuple[float, float]:
        """Mean and standard deviation of MMD^2_u over the subsets."""
        y = torch.from_numpy(as_features(fake, "generated features")).to(self.x.device)
        if y.shape[1] != self.x.shape[1]:
            raise McbenchError(
                f"real and generated features differ in width: {self.x.shape[1]} vs {y.shape[1]}"
            )
        m = min(self.subset_size, len(self.x), len(y))
        if m < 2:
            raise McbenchError("KID needs at least 2 real and 2 generated samples")
        norm = m * (m - 1)
        values = []
        if m == len(y):  # every generated subset is the whole set
            yy = _off_diagonal_sum(y)
            rows = _cross_row_sums(self.x, y)
            for ix, xx in self._real_side(m):
                cross = float(rows[torch.from_numpy(ix).to(rows.device)].sum())
                values.append((xx + yy) / norm - 2.0 * cross / m**2)
        else:
            fake_idx = kid_subsets(len(y), m, self.subsets, 1, self.seed)
            for (ix, xx), iy in zip(self._real_side(m), fake_idx, strict=True):
                ys = y[torch.from_numpy(iy).to(y.device)]
                cross = float(_poly_kernel(self.x[torch.from_numpy(ix).to(y.device)], ys).sum())
                values.append((xx + _off_diagonal_sum(ys)) / norm - 2.0 * cross / m**2)
        return float(np.mean(values)), float(np.std(values))


def kid(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    subsets: int = 100,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = KID_SEED,
) -> tuple[float, float]:
    """KID: mean and standard deviation of MMD^2_u over `subsets` random subsets of
    min(subset_size, len(real), len(fake)) samples a side (without replacement)."""
    return KidReference(real, subsets, subset_size, seed)(fake)


class FeatureReference:
    """Real features fixed once (a dataset's reference set), against which every
    evaluation's generated features are scored: Fréchet distance (Gaussian statistics
    and root computed once), KID, and PRDC on the first min(N, PRDC_SAMPLES)."""

    def __init__(
        self,
        real: np.ndarray | torch.Tensor,
        kid_subsets: int,
        prdc_samples: int = PRDC_SAMPLES,
        device: torch.device | str = "cpu",
    ) -> None:
        x = as_features(real, "real features")
        self.frechet = FrechetReference.of(x)
        self.kid = KidReference(x, kid_subsets, device=device)
        self.prdc = PrdcReference(x[:prdc_samples], device=device)

    def __call__(self, fake: np.ndarray | torch.Tensor) -> dict[str, float]:
        """{"fd", "kid", "precision", "recall", "density", "coverage"} of `fake`; the
        first two NaN for a single sample, PRDC NaN for k samples or fewer."""
        y = as_features(fake, "generated features")
        few = len(y) < 2
        return {
            "fd": math.nan if few else self.frechet(y),
            "kid": math.nan if few else self.kid(y)[0],
            **self.prdc(y),
        }
