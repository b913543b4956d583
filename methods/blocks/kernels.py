"""Kernel two-sample statistics: squared MMD under a mixture of Gaussian (RBF) kernels.

MMD GAN (Li et al., NIPS 2017) compares real and generated features with
MMD^2(P, Q) = E k(x, x') + E k(y, y') - 2 E k(x, y), k a sum of Gaussian kernels
k(x, y) = sum_q exp(-||x - y||^2 / (2 sigma_q^2)) (the authors' code sums over
sigma_q in {1, 2, 4, 8, 16}).

Samples are (..., n, d): leading dimensions (a replica's) pair batches up, so one seed
gives a scalar and R replicas give (R,), each replica's statistic its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

ESTIMATORS = ("biased", "unbiased")


def squared_distances(x: torch.Tensor, y: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """||x_i - y_j||^2 for samples x (..., n, d) and y (..., m, d): (..., n, m).

    By the expansion |x|^2 + |y|^2 - 2 x.y (one matrix product, n x m memory; the
    differences would hold n x m x d, 268 MB for 512 x 512 features of 256), after moving
    both sets by x's mean (distances do not change) so that a large common offset does not
    cancel away the distances; clamped at 0 where rounding leaves a zero slightly below
    (`clamp=False` leaves that to the caller). The sum and the -2 scale ride in the matrix
    product (baddbmm's beta and alpha), which saves two passes over the n x m matrix."""
    centre = x.detach().mean(-2, keepdim=True)
    x, y = x - centre, y - centre
    xx = x.pow(2).sum(-1, keepdim=True)
    yy = y.pow(2).sum(-1).unsqueeze(-2)
    batch = x.shape[:-2]
    x3, y3 = x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:])
    d2 = torch.baddbmm(
        (xx + yy).reshape(-1, x.shape[-2], y.shape[-2]), x3, y3.transpose(-1, -2), alpha=-2.0
    ).reshape(*batch, x.shape[-2], y.shape[-2])
    return d2.clamp_min(0.0) if clamp else d2


def _doublings(scales: Sequence[float]) -> int | None:
    """How many squarings lead from each kernel to the next when the exponents' scales
    form a ladder of ratio 4^j (bandwidths sigma_min * 2^q: j = 1, two squarings), else
    None."""
    if len(scales) < 2:
        return None
    ratio = scales[0] / scales[1]
    j = round(math.log(ratio, 4)) if ratio > 1 else 0
    if j < 1 or any(
        abs(scales[i] / scales[i + 1] - 4.0**j) > 1e-12 * 4.0**j for i in range(len(scales) - 1)
    ):
        return None
    return 2 * j


class _MixRBFExcess(torch.autograd.Function):
    """sum_q expm1(-c_q d2) over the mixture, from the clamped squared distances d2,
    with the derivative sum_q -c_q exp(-c_q d2) (zero where d2 was clamped) summed in
    the same pass and kept for backward. On a bandwidth ladder sigma_min * 2^q one expm1
    serves every kernel: expm1(2t) = expm1(t) * (2 + expm1(t)), exact and as accurate
    as expm1 itself (relative errors add, a few float32 ulps over five kernels), instead
    of one transcendental pass per kernel and autograd's saved temporaries for each."""

    @staticmethod
    def forward(ctx, d2_raw: torch.Tensor, scales: tuple[float, ...]) -> torch.Tensor:
        d2 = d2_raw.clamp_min(0.0)
        need_grad = ctx.needs_input_grad[0]
        steps = _doublings(scales)
        order = sorted(range(len(scales)), key=lambda q: scales[q])  # widest kernel first
        out = w = e = None
        for q in order:
            if e is None or steps is None:
                e = torch.expm1(d2 * (-scales[q]))
            else:
                for _ in range(steps):
                    e = (e + 2.0).mul_(e)
            if need_grad:  # d/dd2 expm1(-c d2) = -c (1 + e): the -c part is added at the end
                w = e * (-scales[q]) if w is None else w.add_(e, alpha=-scales[q])
            out = e if out is None else out.add_(e)  # the first e is not read again
        if need_grad:
            w.sub_(sum(scales)).masked_fill_(d2_raw < 0, 0.0)
            ctx.save_for_backward(w)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (w,) = ctx.saved_tensors
        return grad * w, None


def mix_rbf_excess(x: torch.Tensor, y: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """The kernel matrix minus its value at zero distance, sum_q (k_q - 1), from expm1:
    MMD^2 is a difference of kernel means near len(sigmas) when the features are close
    together (a clipped critic's are), which float32 resolves only to about 5e-7; the
    constants cancel from every MMD^2 estimate, so it is computed from this instead.
    Differentiable once (MMD GAN needs no gradient of a gradient)."""
    scales = tuple(0.5 / (s * s) for s in sigmas)
    return _MixRBFExcess.apply(squared_distances(x, y, clamp=False), scales)


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
