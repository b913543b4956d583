"""Kernel two-sample statistics: squared MMD under a mixture of Gaussian (RBF) kernels.

MMD GAN (Li et al., NIPS 2017) compares real and generated features with
MMD^2(P, Q) = E k(x, x') + E k(y, y') - 2 E k(x, y), k a sum of Gaussian kernels
k(x, y) = sum_q exp(-||x - y||^2 / (2 sigma_q^2)) (the authors' code sums over
sigma_q in {1, 2, 4, 8, 16}).

Samples are (..., n, d): leading dimensions (a replica's) pair batches up, so one seed
gives a scalar and R replicas give (R,), each replica's statistic its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ESTIMATORS = ("biased", "unbiased")


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||x_i - y_j||^2 for samples x (..., n, d) and y (..., m, d): (..., n, m).

    By the expansion |x|^2 + |y|^2 - 2 x.y (one matrix product, n x m memory; the
    differences would hold n x m x d, 268 MB for 512 x 512 features of 256), after moving
    both sets by x's mean (distances do not change) so that a large common offset does not
    cancel away the distances; clamped at 0 where rounding leaves a zero slightly below."""
    centre = x.detach().mean(-2, keepdim=True)
    x, y = x - centre, y - centre
    xx = x.pow(2).sum(-1, keepdim=True)
    yy = y.pow(2).sum(-1).unsqueeze(-2)
    return (xx + yy - 2.0 * x @ y.transpose(-1, -2)).clamp_min(0.0)


def mix_rbf_excess(x: torch.Tensor, y: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """The kernel matrix minus its value at zero distance, sum_q (k_q - 1), from expm1:
    MMD^2 is a difference of kernel means near len(sigmas) when the features are close
    together (a clipped critic's are), which float32 resolves only to about 5e-7; the
    constants cancel from every MMD^2 estimate, so it is computed from this instead."""
    d2 = squared_distances(x, y)
    out = torch.expm1(d2 * (-0.5 / (sigmas[0] * sigmas[0])))
    for s in sigmas[1:]:
        out = out + torch.expm1(d2 * (-0.5 / (s * s)))
    return out


def mix_rbf_kernel(x: torch.Tensor, y: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """sum_q exp(-||x_i - y_j||^2 / (2 sigma_q^2)): the (..., n, m) kernel matrix."""
    return mix_rbf_excess(x, y, sigmas) + len(sigmas)


def mmd2(
    x: torch.Tensor, y: torch.Tensor, sigmas: Sequence[float], estimator: str = "biased"
) -> torch.Tensor:
    """Squared MMD between samples x (..., n, d) and y (..., m, d) under the kernel mixture.

    "biased": the V-statistic mean K_xx + mean K_yy - 2 mean K_xy, the squared RKHS
    distance of the two empirical mean embeddings: never negative, exactly 0 for a set
    against itself, and biased upwards by O(1/n) (the authors' code uses it).
    "unbiased": the U-statistic, the diagonals k(x_i, x_i) left out of the within-sample
    means; its expectation is MMD^2 exactly (Gretton et al. 2012, eq. 3), so it can be
    negative when the two distributions agree.
    Both are computed from the kernel minus its constant (`mix_rbf_excess`), which cancels.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown MMD estimator {estimator!r}; choices: {', '.join(ESTIMATORS)}")
    kxx = mix_rbf_excess(x, x, sigmas)
    kyy = mix_rbf_excess(y, y, sigmas)
    cross = mix_rbf_excess(x, y, sigmas).mean((-2, -1))
    if estimator == "biased":
        return kxx.mean((-2, -1)) + kyy.mean((-2, -1)) - 2.0 * cross
    n, m = x.shape[-2], y.shape[-2]
    within_x = (kxx.sum((-2, -1)) - kxx.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))
    within_y = (kyy.sum((-2, -1)) - kyy.diagonal(dim1=-2, dim2=-1).sum(-1)) / (m * (m - 1))
    return within_x + within_y - 2.0 * cross
