"""What every dataset offers the harness."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mcbench.errors import McbenchError
from mcbench.metrics.registry import MetricSpec, metric_spec


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

    def metric_specs(self) -> tuple[MetricSpec, ...]:
        """The declarations of `metrics()`: what each key means and how reports show it.
        A key declared nowhere is an error here, not a silent column without a direction."""
        specs = []
        for name in self.metrics():
            spec = metric_spec(name)
            if spec is None:
                raise McbenchError(
                    f"dataset {self.name!r} emits {name!r}, which no MetricSpec declares "
                    "(mcbench.metrics.registry.register_metric)"
                )
            specs.append(spec)
        return tuple(specs)

    def info(self) -> dict[str, Any]:
        """Metadata recorded with every run (source, sizes, evaluation)."""
        return {"name": self.name, "family": self.family, "shape": list(self.shape)}
