"""Mixture-of-Gaussians metrics: the LBT paper's (section 5.1) and the VEEGAN/PacGAN
evaluation, side by side, because the same samples score very differently under them.

LBT rules, on all N evaluated samples:
- high-quality sample: Euclidean distance to the nearest mode centre <= 3 std. An exact
  sample of an isotropic 2-D Gaussian qualifies with probability 1 - exp(-9/2) = 98.89%.
- mode covered (`modes_covered`): its count of high-quality samples is at least 20% of
  the expected count N / n_modes (the paper's worked example: 500,000 samples, 8 modes,
  at least 12,500; its text says "greater than 20%", the example "at least").
- modes near the threshold (`modes_near_threshold`, mcbench): modes whose high-quality
  count lies between half and twice that threshold. A mode there flips between covered
  and missed on small differences (a blob spread over the ring at ~20% high quality sits
  on the threshold for every mode), so reports flag `modes_covered` where it is above 0.
- reverse KL (PacGAN Table 1): KL(p_gen || p_data) over the histogram of high-quality
  samples per mode, p_data uniform over modes; empty modes contribute 0. With no
  high-quality sample at all the histogram is undefined and the value is NaN.

VEEGAN/PacGAN rules (VEEGAN paper 5.1; PacGAN's code, `MetricLogger` in
pacgan/extensions.py, on the 2,500 samples its configs draw), on the first 2,500
evaluated samples (NaN when fewer were evaluated: the count grows with N):
- a sample's distance to each mode is sqrt(sum((x - mean)^2 / var)) with the mode's
  per-axis variance; the sample belongs to the nearest mode (the first one on a tie) and
  is high quality when that distance is strictly below 3;
- `modes_covered_any`: modes with at least one high-quality sample;
- `high_quality_pct_2500`, `reverse_kl_2500`: the share and the reverse KL above, by
  this rule and on these samples, as PacGAN's Table 1 reports them.
A generator spread evenly at low quality covers no mode by LBT's rule and every mode by
this one; a collapsed generator with a few stray good samples, the other way round.

Intra-mode KL (LBT): every sample (high quality or not) is assigned to its nearest mode;
a Gaussian is fitted to each mode's samples and the closed-form KL(true mode Gaussian ||
fitted Gaussian) is averaged over modes. Direction: true first, so a fitted mode
narrower than the truth is penalised heavily (the failure the paper attributes to
VEEGAN). The paper leaves degenerate modes open; the rules here:
- the fit is taken on offsets from the mode's centre, in float64, mean first and then
  the centred covariance (divisor n - 1, or 1 for a single sample): no cancellation,
  wherever the mixture sits;
- a mode with fewer than `kl_min_samples` assigned samples (default 10) is left out of
  the average and `kl_modes` reports how many modes entered it; missing modes are
  scored by the mode counts, not here;
- a degenerate fit (a point mass, samples on a line, one sample) has each eigenvalue of
  its covariance raised to at least (KL_STD_FLOOR * std)^2: the KL is finite, and it is
  huge (a point mass on the centre of a 2-D mode scores 1e6 - 1 - ln 1e6 = 999,985.2);
- the KL is summed from terms that are each >= 0 (per eigenvalue a of the fitted
  covariance over std^2: 1/a - 1 + ln a, plus the mean offset's Mahalanobis term), so
  rounding never makes it negative.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mcbench.errors import McbenchError
from mcbench.metrics.registry import MetricSpec, register_metric

LBT = "LBT (ICLR 2019 submission), section 5.1"
VEEGAN_PACGAN = (
    "VEEGAN (Srivastava et al. 2017), section 5.1; PacGAN (Lin et al. 2018) code, "
    "pacgan/extensions.py MetricLogger, 2,500 samples (num_log_figure_sample)"
)
# The number of samples VEEGAN's and PacGAN's 2-D evaluation uses (VEEGAN Table 1, PacGAN
# Table 1 and num_log_figure_sample = 2500 in PacGAN's 2DRing/2DGrid configs).
VEEGAN_PACGAN_SAMPLES = 2_500
# A fitted mode's std is never taken below this fraction of the true std (intra-mode KL).
KL_STD_FLOOR = 1e-3

# modes_covered and reverse_kl mean the same on classified images (metrics/stacked.py
# declares no second version): one declaration per name, covering both evaluations.
MODES_COVERED = MetricSpec(
    "modes_covered",
    "higher",
    "modes",
    "Modes the generator covers (LBT rule): on a 2-D mixture those holding at least 20% "
    "of their expected count N / k of high-quality samples (Euclidean distance to the "
    "nearest centre <= 3 std), over all N evaluated samples; on classified images the "
    "classes (Stacked MNIST: 3-digit labels) with at least one of the N samples.",
    f"{LBT}; Stacked MNIST: LBT section 5.2, VEEGAN (Srivastava et al. 2017)",
    unit="modes",
    lower=0.0,
    flagged_by="modes_near_threshold",
)
# How far from the coverage threshold a mode's count may be and still be "near" it.
NEAR_FACTOR = 2.0
MODES_NEAR_THRESHOLD = MetricSpec(
    "modes_near_threshold",
    None,
    "modes near 20% line",
    "Modes whose high-quality count (LBT rule) lies between half and twice the coverage "
    "threshold 0.2 N / k: each could be counted covered or missed on small differences, so "
    "a modes_covered read with any such mode is flagged.",
    "mcbench (qualifies modes_covered)",
    role="detail",
    unit="modes",
    lower=0.0,
)
HIGH_QUALITY_PCT = MetricSpec(
    "high_quality_pct",
    "higher",
    "% high quality",
    "Share of all N evaluated samples within 3 standard deviations (Euclidean, <=) of "
    "their nearest mode centre.",
    LBT,
    unit="%",
    lower=0.0,
    upper=100.0,
)
INTRA_MODE_KL = MetricSpec(
    "intra_mode_kl",
    "lower",
    "intra-mode KL",
    "KL(true mode Gaussian || Gaussian fitted to the samples nearest that mode), averaged "
    "over modes with at least 10 assigned samples; fit in float64 on offsets from the "
    "centre (mean, then centred covariance), each covariance eigenvalue raised to at "
    f"least ({KL_STD_FLOOR:g} std)^2, so a degenerate mode (a point mass) scores a finite "
    "KL of about 1e6 nats; never negative.",
    f"{LBT}; degenerate-mode rule: mcbench",
    scale="log",
    unit="nats",
    lower=0.0,
)
REVERSE_KL = MetricSpec(
    "reverse_kl",
    "lower",
    "reverse KL",
    "KL(p_gen || p_data) over the histogram of samples per mode (2-D mixtures: "
    "high-quality samples by the LBT rule among all N evaluated, p_data uniform over "
    "modes; MNIST: the class frequencies).",
    "PacGAN (Lin et al. 2018), Table 1; Stacked MNIST: VEEGAN (Srivastava et al. 2017)",
    scale="log",
    unit="nats",
    lower=0.0,
)
KL_MODES = MetricSpec(
    "kl_modes",
    None,
    "modes in KL",
    "Modes with enough assigned samples for a Gaussian fit: those intra_mode_kl averages.",
    "mcbench (qualifies intra_mode_kl)",
    role="detail",
    unit="modes",
    lower=0.0,
)
_FIRST = f"the first {VEEGAN_PACGAN_SAMPLES:,} evaluated samples"
_RULE = (
    "a sample belongs to the mode with the smallest sqrt(sum((x - mean)^2 / var)) "
    "(per-axis variance) and is high quality when that distance is strictly below 3"
)
MODES_COVERED_ANY = MetricSpec(
    "modes_covered_any",
    "higher",
    f"modes (≥1 HQ, N={VEEGAN_PACGAN_SAMPLES:,})",
    f"Modes with at least one high-quality sample among {_FIRST} (VEEGAN/PacGAN rule: "
    f"{_RULE}); NaN when fewer samples were evaluated.",
    VEEGAN_PACGAN,
    role="detail",
    unit="modes",
    samples=VEEGAN_PACGAN_SAMPLES,
    lower=0.0,
)
HIGH_QUALITY_PCT_2500 = MetricSpec(
    "high_quality_pct_2500",
    "higher",
    f"% high quality (N={VEEGAN_PACGAN_SAMPLES:,})",
    f"Share of {_FIRST} that are high quality by the VEEGAN/PacGAN rule ({_RULE}); NaN "
    "when fewer samples were evaluated.",
    VEEGAN_PACGAN,
    role="detail",
    unit="%",
    samples=VEEGAN_PACGAN_SAMPLES,
    lower=0.0,
    upper=100.0,
)
REVERSE_KL_2500 = MetricSpec(
    "reverse_kl_2500",
    "lower",
    f"reverse KL (N={VEEGAN_PACGAN_SAMPLES:,})",
    f"KL(p_gen || uniform) over the histogram of high-quality samples per mode among "
    f"{_FIRST}, by the VEEGAN/PacGAN rule ({_RULE}); NaN when fewer samples were "
    "evaluated or none is high quality.",
    f"PacGAN (Lin et al. 2018), Table 1; rule: {VEEGAN_PACGAN}",
    scale="log",
    role="detail",
    unit="nats",
    samples=VEEGAN_PACGAN_SAMPLES,
    lower=0.0,
)
MIXTURE_SPECS: tuple[MetricSpec, ...] = tuple(
    register_metric(s)
    for s in (
        MODES_COVERED,
        HIGH_QUALITY_PCT,
        INTRA_MODE_KL,
        REVERSE_KL,
        KL_MODES,
        MODES_NEAR_THRESHOLD,
        MODES_COVERED_ANY,
        HIGH_QUALITY_PCT_2500,
        REVERSE_KL_2500,
    )
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
    """Index of the nearest centre (Euclidean) and the exact distance to it.

    The search runs in float32 chunks (fast, bounded memory) on coordinates relative to
    the centres' mean, so a mixture far from the origin (centres near 1e6) is searched as
    well as one around it; the distance to the chosen centre is then computed in float64
    so the 3-std threshold is applied exactly.
    """
    c = centers.to(torch.float64)
    origin = c.mean(0)
    c32 = (c - origin).float()
    c2 = (c32 * c32).sum(1)
    idx = torch.empty(len(x), dtype=torch.long)
    for s in range(0, len(x), _CHUNK):
        xs = (x[s : s + _CHUNK] - origin).float()
        idx[s : s + _CHUNK] = torch.addmm(c2, xs, c32.T, alpha=-2).argmin(1)
    dist = (x - c[idx]).norm(dim=1)
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


def isotropic_kl(offset: np.ndarray, cov: np.ndarray, std: float) -> np.ndarray:
    """KL(N(0, std^2 I) || N(offset, cov)), batched, as a sum of non-negative terms.

    With a_i the eigenvalues of cov / std^2 (each raised to at least KL_STD_FLOOR^2) and
    v_i their eigenvectors: KL = 1/2 sum_i [1/a_i - 1 + ln a_i + (v_i . offset / std)^2 / a_i].
    Each 1/a - 1 + ln a is computed as log1p(u) - u / (1 + u), u = a - 1, and clipped at
    0 (its minimum, at a = 1), so the sum is finite and never negative.
    """
    a, v = np.linalg.eigh(cov / std**2)
    a = np.maximum(a, KL_STD_FLOOR**2)
    u = a - 1.0
    shape = np.maximum(np.log1p(u) - u / a, 0.0).sum(-1)
    proj = np.einsum("...ij,...i->...j", v, offset / std)
    return 0.5 * (shape + (proj**2 / a).sum(-1))


def intra_mode_kl(
    x: torch.Tensor, idx: torch.Tensor, centers: torch.Tensor, std: float, min_samples: int
) -> tuple[float, int]:
    """Averaged intra-mode KL over modes with at least `min_samples` samples, and how
    many such modes there are (NaN and 0 when none)."""
    k, d = centers.shape
    r = x - centers.to(torch.float64)[idx]  # offsets from the own centre: no cancellation
    counts = torch.bincount(idx, minlength=k).to(torch.float64)
    mean = torch.zeros(k, d, dtype=torch.float64).index_add_(0, idx, r)
    mean = mean / counts.clamp(min=1)[:, None]
    rc = r - mean[idx]
    scatter = torch.zeros(k, d, d, dtype=torch.float64)
    scatter.index_add_(0, idx, rc[:, :, None] * rc[:, None, :])
    use = (counts >= min_samples).numpy()
    if not use.any():
        return math.nan, 0
    cov = (scatter / (counts - 1).clamp(min=1)[:, None, None]).numpy()[use]
    kl = isotropic_kl(mean.numpy()[use], cov, std)
    return float(kl.mean()), int(use.sum())


def veegan_pacgan_rule(x: np.ndarray, centers: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Per sample, the index of its mode when it is high quality by the VEEGAN/PacGAN
    rule (normalised distance strictly below 3), else -1. `var`: per-mode, per-axis
    variances (k, d). Fine for their 2,500 samples: the (N, k) distances are explicit."""
    diff = x[:, None, :] - centers[None, :, :]
    dist = np.sqrt((diff * diff / var[None, :, :]).sum(-1))
    nearest = dist.argmin(1)  # the first mode on a tie, as their strict-< loop
    good = dist[np.arange(len(x)), nearest] < 3
    return np.where(good, nearest, -1)


def reverse_kl_uniform(counts: np.ndarray) -> float:
    """KL(p || uniform over len(counts) modes) of a histogram; NaN when it is empty."""
    total = counts.sum()
    if total <= 0:
        return math.nan
    p = counts[counts > 0] / total
    return float((p * np.log(p * len(counts))).sum())


def veegan_pacgan_metrics(x: torch.Tensor, centers: np.ndarray, std: float) -> dict[str, float]:
    """The VEEGAN/PacGAN evaluation of the first 2,500 samples (NaN when fewer)."""
    names = ("modes_covered_any", "high_quality_pct_2500", "reverse_kl_2500")
    n = VEEGAN_PACGAN_SAMPLES
    if len(x) < n:
        return dict.fromkeys(names, math.nan)
    var = np.full(centers.shape, float(std) ** 2)
    mode = veegan_pacgan_rule(x[:n].numpy(), centers, var)
    counts = np.bincount(mode[mode >= 0], minlength=len(centers)).astype(np.float64)
    return {
        "modes_covered_any": float((counts > 0).sum()),
        "high_quality_pct_2500": 100.0 * float(counts.sum()) / n,
        "reverse_kl_2500": reverse_kl_uniform(counts),
    }


def mixture_metrics(
    samples: np.ndarray | torch.Tensor,
    centers: np.ndarray,
    std: float,
    kl_min_samples: int = 10,
    coverage_fraction: float = 0.2,
) -> dict[str, float]:
    """Every mixture metric of `samples` against an equal-weight isotropic mixture."""
    if kl_min_samples < 1:
        raise McbenchError(f"kl_min_samples must be >= 1, got {kl_min_samples}")
    centers = np.asarray(centers, dtype=np.float64)
    c = torch.as_tensor(centers)
    x = as_samples(samples, c.shape[1])
    n, k = len(x), len(c)
    idx, dist = nearest_mode(x, c)
    hq = dist <= 3 * std
    hq_counts = torch.bincount(idx[hq], minlength=k).numpy().astype(np.float64)
    threshold = coverage_fraction * n / k
    covered = int((hq_counts >= threshold).sum())
    near = (hq_counts >= threshold / NEAR_FACTOR) & (hq_counts < threshold * NEAR_FACTOR)
    intra, kl_modes = intra_mode_kl(x, idx, c, std, kl_min_samples)
    return {
        "high_quality_pct": 100.0 * float(hq.double().mean()),
        "modes_covered": float(covered),
        "modes_near_threshold": float(near.sum()),
        "intra_mode_kl": intra,
        "kl_modes": float(kl_modes),
        "reverse_kl": reverse_kl_uniform(hq_counts),
        **veegan_pacgan_metrics(x, centers, std),
    }
