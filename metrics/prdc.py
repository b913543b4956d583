"""Precision, recall, density and coverage (Naeem et al., 2020, "Reliable Fidelity and
Diversity Metrics for Generative Models", ICML, sections 2-3; precision and recall are
the k-NN ones of Kynkäänniemi et al., 2019, as Naeem et al. write them).

With real samples X_1..X_N, fake samples Y_1..Y_M, and NND_k(Z) the distance from Z to
its k-th nearest neighbour within its own set (itself excluded), B(Z, r) the open ball
{z : ||z - Z|| < r}:
- precision = 1/M sum_j 1[Y_j in some B(X_i, NND_k(X_i))]    fake samples on the real manifold
- recall    = 1/N sum_i 1[X_i in some B(Y_j, NND_k(Y_j))]    real samples on the fake manifold
- density   = 1/(kM) sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))] how many real balls hold a fake
- coverage  = 1/N sum_i 1[some Y_j in B(X_i, NND_k(X_i))]     real balls holding any fake
Balls are open (strict <), as in the authors' code (clovaai/generative-evaluation-prdc):
for identical sets (no tied distances) precision = recall = coverage = 1 and density is
exactly 1, because each real ball then holds its own centre and its k - 1 nearer
neighbours, the k-th lying on the boundary: (1 + (k - 1)) / k = 1. For two independent
samples of one distribution E[density] = 1 and E[coverage] = 1 - prod_{i=1..k}
(N - i) / (N + M - i) (Naeem et al., Lemmas 1 and 2), 1 - 2^-k for large N = M.

k = 5 by default, the value of the authors' code example (10,000 samples a side). In a
few dimensions (2-D mixtures) the neighbours come from k-d trees; in many (image
features), from distance matrices computed in row chunks (bounded memory). The cost
grows with N^2 in many dimensions, so the harness caps N (`PRDC_SAMPLES`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from mcbench.errors import McbenchError
from mcbench.metrics.registry import MetricSpec, register_metric

NAEEM = (
    "Naeem et al. 2020, Reliable Fidelity and Diversity Metrics for Generative Models "
    "(ICML), sections 2-3; open balls as in the authors' code"
)
# Nearest neighbours defining each ball: k = 5, as the authors' code example.
PRDC_K = 5
# Samples a side: the first min(N, PRDC_SAMPLES) evaluated samples against as many real
# ones. The authors' example uses 10,000; 5,000 keeps one 2-D evaluation near 0.1-0.2 s
# on one core (the quick suite evaluates 100,000 samples several times a run; a generator
# collapsed onto one exact point costs about 0.4 s) and an image one near a second;
# N = M keeps E[coverage] at 1 - prod (N - i) / (2N - i) ~ 0.969 for k = 5.
PRDC_SAMPLES = 5_000
# Seed of the real reference samples a dataset draws for PRDC (any fixed value).
PRDC_SEED = 2020
# Up to this many dimensions PRDC runs on k-d trees, above on distance matrices.
KD_MAX_DIM = 8
# Distance rows per chunk: at most this many distances held at once (64 MiB in float64).
_CHUNK_ELEMENTS = 1 << 23
# Balls (centres) whose index lists a k-d tree returns at once.
_KD_CHUNK = 256
# Relative margin inside which a distance counts as on a ball's boundary (outside).
_TIE = 1e-12

_WHERE = (
    f"k = {PRDC_K} nearest neighbours; the first min(N, {PRDC_SAMPLES:,}) evaluated samples "
    "against as many real ones drawn with a fixed seed; 2-D mixtures: the coordinates, "
    "MNIST and Stacked MNIST: the harness's MNIST CNN's penultimate features (per channel, "
    "concatenated), CIFAR-10 and CelebA: Inception v3 pool features (2,048)"
)
PRECISION = MetricSpec(
    "precision",
    "higher",
    "precision (k-NN)",
    "Share of generated samples inside the real manifold: the union of open balls around "
    f"each real sample with radius its k-th nearest-neighbour distance among the real; {_WHERE}.",
    NAEEM,
    role="detail",
    lower=0.0,
    upper=1.0,
)
RECALL = MetricSpec(
    "recall",
    "higher",
    "recall (k-NN)",
    "Share of real samples inside the generated manifold (balls around each generated "
    f"sample with its k-th nearest-neighbour distance among the generated); {_WHERE}.",
    NAEEM,
    role="detail",
    lower=0.0,
    upper=1.0,
)
DENSITY = MetricSpec(
    "density",
    "higher",
    "density",
    "Real-sample balls (radius: k-th nearest real neighbour) holding each generated sample, "
    f"averaged and divided by k: 1 in expectation for a perfect generator; {_WHERE}.",
    NAEEM,
    lower=0.0,
)
COVERAGE = MetricSpec(
    "coverage",
    "higher",
    "coverage",
    "Share of real samples whose ball (radius: k-th nearest real neighbour) holds at least "
    "one generated sample; a perfect generator scores 1 - 2^-k = 0.969 at equal large N; "
    f"{_WHERE}.",
    NAEEM,
    lower=0.0,
    upper=1.0,
)
PRDC_SPECS: tuple[MetricSpec, ...] = tuple(
    register_metric(s) for s in (PRECISION, RECALL, DENSITY, COVERAGE)
)
PRDC_METRICS: tuple[str, ...] = tuple(s.name for s in PRDC_SPECS)


def _as_features(x: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    if t.ndim != 2 or len(t) == 0 or t.shape[1] == 0:
        raise McbenchError(f"{what} must have shape (N, D) with N, D >= 1, got {tuple(t.shape)}")
    t = t.detach().to("cpu", torch.float64)
    if not torch.isfinite(t).all():
        raise McbenchError(f"{what} contain NaN or inf values")
    return t


def _inside(r: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Points at distances strictly below this are inside an open ball of radius r: a
    point exactly on the boundary (the k-th neighbour itself, for identical sets) stays
    out whichever way the two distances were rounded, and a ball of radius 0 (a point
    repeated more than k times) holds nothing."""
    return r * (1.0 - _TIE)


# -- few dimensions: k-d trees (exact, O(N log N) for spread-out data) -----------------


def _kd_radii(tree: Any, x: np.ndarray, k: int) -> np.ndarray:
    return tree.query(x, k=k + 1)[0][:, k]


def _kd_hits(tree: Any, centres: np.ndarray, radii: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Which of the tree's n points lie inside any ball (centres[i], radii[i]), and how
    many (point, ball) pairs there are in all. The tree's balls are closed, which
    differs from open ones only for points at exactly the shrunken radius: measure zero,
    but for radius 0, so balls of radius 0 are left out."""
    hit = np.zeros(n, dtype=bool)
    live = np.flatnonzero(radii > 0)
    counts = tree.query_ball_point(centres[live], _inside(radii[live]), return_length=True)
    busy = live[np.flatnonzero(counts)]
    for a in range(0, len(busy), _KD_CHUNK):  # index lists in chunks: bounded memory
        rows = busy[a : a + _KD_CHUNK]
        lists = tree.query_ball_point(centres[rows], _inside(radii[rows]), return_sorted=False)
        hit[np.concatenate([np.asarray(ix, dtype=np.int64) for ix in lists])] = True
    return hit, int(counts.sum())


def _prdc_kdtree(x: np.ndarray, y: np.ndarray, k: int, r: np.ndarray) -> dict[str, float]:
    from scipy.spatial import cKDTree

    tx, ty = cKDTree(x), cKDTree(y)
    s = _kd_radii(ty, y, k)
    on_real, pairs = _kd_hits(ty, x, r, len(y))  # fakes in real balls; (fake, ball) pairs
    on_fake = _kd_hits(tx, y, s, len(x))[0]  # reals in fake balls
    nearest_fake = ty.query(x, k=1)[0]
    return {
        "precision": float(on_real.mean()),
        "recall": float(on_fake.mean()),
        "density": pairs / (k * len(y)),
        "coverage": float((nearest_fake < _inside(r)).mean()),
    }


# -- many dimensions: chunked distance matrices (float64 products on centred data) ------


def _sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = torch.addmm((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :], a, b.T, alpha=-2)
    return d.clamp_min_(0)


def _rows(n_cols: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(n_cols, 1))


def _bf_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    step = _rows(len(x))
    out = [
        _sq_distances(x[s : s + step], x).topk(k + 1, dim=1, largest=False).values[:, k]
        for s in range(0, len(x), step)
    ]
    return torch.cat(out).sqrt()


def _prdc_brute(x: torch.Tensor, y: torch.Tensor, k: int, r: torch.Tensor) -> dict[str, float]:
    s2 = _inside(_bf_radii(y, k)) ** 2
    r2 = _inside(r) ** 2
    in_balls = torch.zeros(len(y), dtype=torch.float64, device=y.device)  # balls per fake
    recalled = covered = 0
    step = _rows(len(y))
    for a in range(0, len(x), step):
        d2 = _sq_distances(x[a : a + step], y)  # real rows, fake columns
        inside = d2 < r2[a : a + step, None]
        in_balls += inside.sum(0)
        recalled += int((d2 < s2[None, :]).any(1).sum())
        covered += int(inside.any(1).sum())
    return {
        "precision": float((in_balls > 0).double().mean()),
        "recall": recalled / len(x),
        "density": float(in_balls.sum()) / (k * len(y)),
        "coverage": covered / len(x),
    }


def _use_tree(dim: int, method: str) -> bool:
    if method not in ("auto", "kdtree", "brute"):
        raise McbenchError(f"PRDC method must be 'auto', 'kdtree' or 'brute', got {method!r}")
    return method == "kdtree" or (method == "auto" and dim <= KD_MAX_DIM)


def knn_radii(
    x: np.ndarray | torch.Tensor,
    k: int,
    method: str = "auto",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row (itself excluded: the
    (k + 1)-th smallest distance, the first being its own 0); on the CPU."""
    t = _as_features(x, "features")
    if not isinstance(k, int) or not 1 <= k < len(t):
        raise McbenchError(
            f"k must be an integer in 1..{len(t) - 1} for {len(t)} samples, got {k!r}"
        )
    t = t - t.mean(0)
    if _use_tree(t.shape[1], method):
        from scipy.spatial import cKDTree

        return torch.from_numpy(_kd_radii(cKDTree(t.numpy()), t.numpy(), k))
    return _bf_radii(t.to(device or "cpu"), k).cpu()


def prdc(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    k: int = PRDC_K,
    real_radii: torch.Tensor | None = None,
    method: str = "auto",
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Precision, recall, density and coverage of `fake` against `real` (both (N, D)).

    `real_radii` may hold knn_radii(real, k) computed once for a fixed reference set.
    `method`: "kdtree" (k-d trees, fast in few dimensions), "brute" (distance matrices
    in row chunks, on `device` when given: a GPU), or "auto": trees up to KD_MAX_DIM
    dimensions. Both give the same values (tested); only their cost differs.
    """
    x = _as_features(real, "real features")
    y = _as_features(fake, "fake features")
    if x.shape[1] != y.shape[1]:
        raise McbenchError(f"real and fake features differ in width: {x.shape[1]} vs {y.shape[1]}")
    if not isinstance(k, int) or k < 1:
        raise McbenchError(f"k must be a positive integer, got {k!r}")
    if len(x) <= k or len(y) <= k:
        raise McbenchError(f"PRDC with k = {k} needs more than {k} real and fake samples")
    tree = _use_tree(x.shape[1], method)
    if real_radii is None:
        real_radii = knn_radii(x, k, "kdtree" if tree else "brute", device)
    r = torch.as_tensor(real_radii, dtype=torch.float64)
    if r.shape != (len(x),):
        raise McbenchError(f"real_radii must have shape ({len(x)},), got {tuple(r.shape)}")
    origin = x.mean(0)  # centred: the product form of the distances loses less to rounding
    x, y = x - origin, y - origin
    if tree:
        return _prdc_kdtree(x.numpy(), y.numpy(), k, r.numpy())
    dev = device or "cpu"
    return _prdc_brute(x.to(dev), y.to(dev), k, r.to(dev))


def expected_coverage(n_real: int, n_fake: int, k: int = PRDC_K) -> float:
    """E[coverage] for independent samples of one distribution (Naeem et al., Lemma 2):
    1 - prod_{i=1..k} (N - i) / (N + M - i)."""
    return 1.0 - math.prod((n_real - i) / (n_real + n_fake - i) for i in range(1, k + 1))


class PrdcReference:
    """A fixed real reference set with its k-NN radii, computed once and reused by every
    evaluation: fake sets are cut to the reference's size (`PRDC_SAMPLES` at most)."""

    def __init__(
        self,
        real: np.ndarray | torch.Tensor,
        k: int = PRDC_K,
        device: torch.device | str | None = None,
    ) -> None:
        self.real = _as_features(real, "real features")
        self.k, self.device = k, device
        self.radii = knn_radii(self.real, k, device=device)

    def __call__(self, fake: np.ndarray | torch.Tensor) -> dict[str, float]:
        """PRDC of the first min(len(fake), len(reference)) fake samples against as many
        reference samples (N = M, so the expectations above hold)."""
        n = min(len(fake), len(self.real))
        if n <= self.k:  # no k-th neighbour: undefined, as the 2,500-sample rule's NaN
            return dict.fromkeys(PRDC_METRICS, math.nan)
        if n == len(self.real):
            return prdc(self.real, fake[:n], self.k, self.radii, device=self.device)
        return prdc(self.real[:n], fake[:n], self.k, device=self.device)
