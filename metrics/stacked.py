"""Mode metrics of classified samples (Stacked MNIST, MNIST), as the LBT and VEEGAN
papers compute them.

Each generated sample gets a discrete label (for Stacked MNIST, the classifier's digits
of its three channels read as one 3-digit number, 000..999). Then
- modes captured: the number of distinct labels with at least one sample;
- KL(p_gen || p_data) over the label histogram, p_gen the generated label frequencies.
  On Stacked MNIST p_data is uniform over the 1,000 modes, so
  KL = sum_i p_i log(1000 p_i), with empty labels contributing 0; it is 0 for a
  perfectly uniform histogram and log(1000) for a single mode.
The papers use 26,000 samples; the value depends on N (a uniform sampler's expected
KL is about (K - 1) / (2N) = 0.019 for K = 1,000, N = 26,000), so compare equal N only.
"""

from __future__ import annotations

import numpy as np
import torch

from mcbench.errors import McbenchError
from mcbench.metrics.mixtures import MODES_COVERED, REVERSE_KL
from mcbench.metrics.registry import MetricSpec

# The same names as on the 2-D mixtures, declared there once for both evaluations.
MODE_SPECS: tuple[MetricSpec, ...] = (MODES_COVERED, REVERSE_KL)
MODE_METRICS: tuple[str, ...] = tuple(s.name for s in MODE_SPECS)


def stack_labels(digits: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-channel digits (N, C) in 0..9 -> one mode label per sample, channel 0 the
    most significant digit (R, G, B = 1, 2, 3 gives 123)."""
    d = np.asarray(digits.cpu() if torch.is_tensor(digits) else digits)
    if d.ndim != 2 or d.shape[1] == 0:
        raise McbenchError(f"digit labels must have shape (N, C), got {d.shape}")
    if d.size and (d.min() < 0 or d.max() > 9):
        raise McbenchError("digit labels must lie in 0..9")
    weights = 10 ** np.arange(d.shape[1] - 1, -1, -1)
    return (d.astype(np.int64) * weights).sum(axis=1)


def mode_metrics(
    labels: np.ndarray | torch.Tensor, n_modes: int, p_data: np.ndarray | None = None
) -> dict[str, float]:
    """Modes captured and KL(p_gen || p_data) of integer labels in 0..n_modes-1.

    `p_data` defaults to uniform over the modes (the Stacked MNIST convention).
    """
    y = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels).reshape(-1)
    if y.size == 0:
        raise McbenchError("mode metrics need at least one label")
    if not np.issubdtype(y.dtype, np.integer):
        raise McbenchError(f"labels must be integers, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= n_modes:
        raise McbenchError(f"labels must lie in 0..{n_modes - 1}")
    counts = np.bincount(y, minlength=n_modes).astype(np.float64)
    p = counts / counts.sum()
    q = np.full(n_modes, 1.0 / n_modes) if p_data is None else np.asarray(p_data, np.float64)
    if q.shape != (n_modes,) or (q < 0).any() or not np.isclose(q.sum(), 1.0):
        raise McbenchError(f"p_data must be a probability vector of length {n_modes}")
    nz = p > 0
    with np.errstate(divide="ignore"):
        kl = float((p[nz] * (np.log(p[nz]) - np.log(q[nz]))).sum())
    return {"modes_covered": float(nz.sum()), "reverse_kl": kl}
