"""What every dataset offers the harness."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch


class Dataset:
    """A named data source with its own evaluation.

    `family` selects the protocol (networks, optimiser, budget) under which methods are
    compared on it; `evaluate` returns the metrics that apply to it.
    """

    name: str = ""
    family: ClassVar[str] = ""
    shape: tuple[int, ...] = ()

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """n training samples drawn with `generator` (seeded by the harness)."""
        raise NotImplementedError

    def evaluate(self, samples: np.ndarray | torch.Tensor) -> dict[str, float]:
        """Metrics of generated samples against this dataset."""
        raise NotImplementedError

    def artifacts(self, samples: torch.Tensor, out_dir: Path) -> None:
        """Files written beside a run's results from its final samples (image datasets
        save a sample grid here). Default: nothing."""
        return None

    def metrics(self) -> tuple[str, ...]:
        """Names of the keys `evaluate` returns."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """Metadata recorded with every run (source, sizes, evaluation)."""
        return {"name": self.name, "family": self.family, "shape": list(self.shape)}
