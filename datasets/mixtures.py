"""2-D mixtures of isotropic Gaussians with equal weights (LBT and VEEGAN/PacGAN).

Sampling is from the true distribution at every step (an infinite stream), as in the
LBT authors' code; the harness seeds the stream.

Besides the mixture metrics, evaluation computes precision, recall, density and
coverage (Naeem et al. 2020) on the coordinates: the first min(N, 5,000) samples
against as many real ones, drawn once per mixture from a fixed seed.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from mcbench.datasets.base import Dataset
from mcbench.metrics.mixtures import MIXTURE_METRICS, as_samples, mixture_metrics
from mcbench.metrics.prdc import PRDC_METRICS, PRDC_SAMPLES, PRDC_SEED, PrdcReference

# Real PRDC references per mixture (centres, std): drawn and their radii computed once
# per process, whichever Dataset object asks.
_PRDC_REFERENCES: dict[tuple[bytes, float], PrdcReference] = {}


class GaussianMixture2D(Dataset):
    family: ClassVar[str] = "mixture2d"

    def __init__(self, name: str, centers: np.ndarray, std: float, source: str) -> None:
        self.name = name
        self.centers = np.asarray(centers, dtype=np.float64)
        self.std = float(std)
        self.source = source
        self.shape = (2,)
        self._centers_t: dict[str, torch.Tensor] = {}

    @property
    def n_modes(self) -> int:
        return len(self.centers)

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        c = self._centers_on(device)
        idx = torch.randint(len(c), (n,), generator=generator, device=device)
        eps = torch.randn(n, 2, generator=generator, device=device)
        return c.index_select(0, idx) + self.std * eps  # c[idx]'s rows, in half the time

    def _centers_on(self, device: torch.device) -> torch.Tensor:
        """The centres as a float32 tensor on `device`, made once per device: sampling
        runs every training step."""
        key = str(device)
        if key not in self._centers_t:
            self._centers_t[key] = torch.as_tensor(self.centers, dtype=torch.float32, device=device)
        return self._centers_t[key]

    def evaluate(self, samples: np.ndarray | torch.Tensor, **kwargs: Any) -> dict[str, float]:
        """Both mode-count rules (LBT's on all samples, VEEGAN/PacGAN's on the first
        2,500) and the other mixture metrics: mcbench.metrics.mixtures; PRDC on the
        first min(N, 5,000) samples: mcbench.metrics.prdc."""
        metrics = mixture_metrics(samples, self.centers, self.std, **kwargs)
        x = as_samples(samples[:PRDC_SAMPLES], 2)  # validated in full just above
        return {**metrics, **self.prdc_reference()(x)}

    def prdc_reference(self) -> PrdcReference:
        """PRDC_SAMPLES real samples drawn with PRDC_SEED, with their k-NN radii."""
        key = (self.centers.tobytes(), self.std)
        if key not in _PRDC_REFERENCES:
            g = torch.Generator().manual_seed(PRDC_SEED)
            _PRDC_REFERENCES[key] = PrdcReference(self.sample(PRDC_SAMPLES, g, torch.device("cpu")))
        return _PRDC_REFERENCES[key]

    def metrics(self) -> tuple[str, ...]:
        return (*MIXTURE_METRICS, *PRDC_METRICS)

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "modes": self.n_modes,
            "std": self.std,
            "source": self.source,
            "evaluation": "mixture: high-quality share, modes covered (20% rule), intra-mode "
            "KL, reverse KL on all samples (LBT paper 5.1, PacGAN Table 1); modes with any "
            "high-quality sample, high-quality share and reverse KL on the first 2,500 "
            "samples (VEEGAN/PacGAN rule); precision, recall, density, coverage (k = 5) of "
            "the first min(N, 5,000) samples against as many real ones (Naeem et al. 2020)",
        }


def ring_centers(n: int = 8, radius: float = 1.0) -> np.ndarray:
    """Angles 2*pi*k/n, k = 0..n-1 (n distinct modes), x = r sin t, y = r cos t."""
    t = 2 * math.pi * np.arange(n) / n
    return radius * np.stack([np.sin(t), np.cos(t)], axis=1)


def grid_centers(values: np.ndarray) -> np.ndarray:
    xx, yy = np.meshgrid(values, values, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def ring() -> GaussianMixture2D:
    """LBT ring: 8 modes on the unit circle, std 0.1."""
    return GaussianMixture2D("ring", ring_centers(8, 1.0), 0.1, "LBT paper, section 5.1")


def grid() -> GaussianMixture2D:
    """LBT grid: 10x10 modes at -0.9, -0.7, ..., 0.9, std 0.01."""
    values = np.round(np.linspace(-0.9, 0.9, 10), 10)
    return GaussianMixture2D("grid", grid_centers(values), 0.01, "LBT paper, section 5.1")


def ring_veegan() -> GaussianMixture2D:
    """VEEGAN/PacGAN ring: 8 modes on the unit circle, std 0.01."""
    return GaussianMixture2D("ring-veegan", ring_centers(8, 1.0), 0.01, "VEEGAN/PacGAN code")


def grid_veegan() -> GaussianMixture2D:
    """VEEGAN/PacGAN grid: 5x5 modes at {-4,-2,0,2,4}^2, std 0.05."""
    values = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
    return GaussianMixture2D("grid-veegan", grid_centers(values), 0.05, "PacGAN code")
