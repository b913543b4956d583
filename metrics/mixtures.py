"""Mixture-of-Gaussians metrics, exactly as section 5.1 of the LBT paper defines them.

- high-quality sample: Euclidean distance to the nearest mode centre <= 3 std. An exact
  sample of an isotropic 2-D Gaussian qualifies with probability 1 - exp(-9/2) = 98.89%.
- mode covered: its count of high-quality samples is at least 20% of the expected count
  N / n_modes (the paper's worked example: 500,000 samples, 8 modes, at least 12,500).
- intra-mode KL: every sample (high quality or not) is assigned to its nearest mode; a
  Gaussian (mean, unbiased covariance) is fitted to each mode's samples and the
  closed-form KL(true mode Gaussian || fitted Gaussian) is averaged over modes.
  Direction: true first, so a fitted mode narrower than the truth is penalised heavily
  (the failure the paper attributes to VEEGAN). A mode with fewer than
  `kl_min_samples` assigned samples (default 10) has no meaningful fit: it is left out
  of the average and `kl_modes` reports how many modes entered it. Missing modes are
  scored by `modes_covered`, not here. A degenerate fit (all samples on one point) gets
  a ridge of (1e-6 std)^2 so the KL is huge but finite.
- reverse KL (PacGAN Table 1): KL(p_gen || p_data) over the histogram of high-quality
  samples per mode, p_data uniform over modes; empty modes contribute 0. With no
  high-quality sample at all the histogram is undefined and the value is NaN.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mcbench.errors import McbenchError
from mcbench.metrics.registry import MetricSpec, register_metric

LBT = "LBT (ICLR 2019 submission), section 5.1"
# modes_covered and reverse_kl mean the same on classified images (metrics/stacked.py
# declares no second version): one declaration per name, covering both evaluations.
MODES_COVERED = MetricSpec(
    "modes_covered",
    "higher",
    "modes",
    "Modes the generator covers: on a 2-D mixture those holding at least 20% of their "
    "expected count of high-quality samples; on classified images the classes (Stacked "
    "MNIST: 3-digit labels) with at least one sample.",
    f"{LBT}; Stacked MNIST: LBT section 5.2, VEEGAN (Srivastava et al. 2017)",
    unit="modes",
)
HIGH_QUALITY_PCT = MetricSpec(
    "high_quality_pct",
    "higher",
    "% high quality",
    "Share of samples within 3 standard deviations of their nearest mode centre.",
    LBT,
    unit="%",
)
INTRA_MODE_KL = MetricSpec(
    "intra_mode_kl",
    "lower",
    "intra-mode KL",
    "KL(true mode Gaussian || Gaussian fitted to the samples nearest that mode), averaged "
    "over modes with enough samples for a fit.",
    LBT,
    scale="log",
    unit="nats",
)
REVERSE_KL = MetricSpec(
    "reverse_kl",
    "lower",
    "reverse KL",
    "KL(p_gen || p_data) over the histogram of samples per mode (2-D mixtures: "
    "high-quality samples only; p_data uniform over modes, MNIST: the class frequencies).",
    "PacGAN (Lin et al. 2018), Table 1; Stacked MNIST: VEEGAN (Srivastava et al. 2017)",
    scale="log",
    unit="nats",
)
KL_MODES = MetricSpec(
    "kl_modes",
    None,
    "modes in KL",
    "Modes with enough assigned samples for a Gaussian fit: those intra_mode_kl averages.",
    "mcbench (qualifies intra_mode_kl)",
    role="detail",
    unit="modes",
)
MIXTURE_SPECS: tuple[MetricSpec, ...] = tuple(
    register_metric(s)
    for s in (MODES_COVERED, HIGH_QUALITY_PCT, INTRA_MODE_KL, REVERSE_KL, KL_MODES)
)
MIXTURE_METRICS: tuple[str, ...] = tuple(s.name for s in MIXTURE_SPECS)

_CHUNK = 1 << 16


def as_samples(samples: np.ndarray | torch.Tensor, dim: int) -> torch.Tensor:
    """Validate generated samples: shape (N, dim), N >= 1, all finite."""
    x = torch.as_tensor(np.asarray(samples) if not torch.is_tensor(samples) else samples)
    if x.ndim != 2 or x.shape[1] != dim or x.shape[0] == 0:
        raise McbenchError(f"samples must have shape (N, {dim}) with N >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise McbenchError(f"samples contain NaN or inf values ({bad} of {len(x)} rows)")
    return x


def nearest_mode(x: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest centre and the exact distance to it.

    The search runs in float32 chunks (fast, bounded memory); the distance to the chosen
    centre is then recomputed in float64 so the 3-std threshold is applied exactly.
    """
    x32 = x.float()
    c32 = centers.float()
    c2 = (c32 * c32).sum(1)
    idx = torch.empty(len(x), dtype=torch.long)
    for s in range(0, len(x), _CHUNK):
        xs = x32[s : s + _CHUNK]
        idx[s : s + _CHUNK] = (c2 - 2 * xs @ c32.T).argmin(1)
    dist = (x - centers.to(x.dtype)[idx]).norm(dim=1)
    return idx, dist


def gaussian_kl(mu0: np.ndarray, cov0: np.ndarray, mu1: np.ndarray, cov1: np.ndarray) -> np.ndarray:
    """KL(N(mu0, cov0) || N(mu1, cov1)), batched over a leading axis."""
    k = mu0.shape[-1]
    inv1 = np.linalg.inv(cov1)
    diff = mu1 - mu0
    trace = np.einsum("...ij,...ji->...", inv1, cov0)
    maha = np.einsum("...i,...ij,...j->...", diff, inv1, diff)
    _, logdet0 = np.linalg.slogdet(cov0)
    _, logdet1 = np.linalg.slogdet(cov1)
    return 0.5 * (trace + maha - k + logdet1 - logdet0)


def mixture_metrics(
    samples: np.ndarray | torch.Tensor,
    centers: np.ndarray,
    std: float,
    kl_min_samples: int = 10,
    coverage_fraction: float = 0.2,
) -> dict[str, float]:
    """All mixture metrics of `samples` against an equal-weight isotropic mixture."""
    c = torch.as_tensor(np.asarray(centers), dtype=torch.float64)
    x = as_samples(samples, c.shape[1])
    n, d = x.shape
    k = len(c)
    idx, dist = nearest_mode(x, c)
    hq = dist <= 3 * std
    hq_counts = torch.bincount(idx[hq], minlength=k).numpy()
    covered = int((hq_counts >= coverage_fraction * n / k).sum())

    # Per-mode sufficient statistics of all assigned samples, for the Gaussian fits.
    counts = torch.bincount(idx, minlength=k).numpy().astype(np.float64)
    sums = torch.zeros(k, d, dtype=torch.float64).index_add_(0, idx, x).numpy()
    outer = x[:, :, None] * x[:, None, :]
    sq = torch.zeros(k, d, d, dtype=torch.float64).index_add_(0, idx, outer).numpy()
    use = counts >= max(kl_min_samples, d + 1)
    if use.any():
        cnt = counts[use]
        mu = sums[use] / cnt[:, None]
        cov = (sq[use] - cnt[:, None, None] * mu[:, :, None] * mu[:, None, :]) / (
            cnt[:, None, None] - 1
        )
        cov = cov + (1e-6 * std) ** 2 * np.eye(d)
        true_cov = np.broadcast_to(std**2 * np.eye(d), cov.shape)
        kl = gaussian_kl(c.numpy()[use], true_cov, mu, cov)
        intra = float(kl.mean())
    else:
        intra = math.nan

    total_hq = hq_counts.sum()
    if total_hq > 0:
        p = hq_counts[hq_counts > 0] / total_hq
        reverse = float((p * np.log(p * k)).sum())
    else:
        reverse = math.nan
    return {
        "high_quality_pct": 100.0 * float(hq.double().mean()),
        "modes_covered": float(covered),
        "intra_mode_kl": intra,
        "kl_modes": float(use.sum()),
        "reverse_kl": reverse,
    }
