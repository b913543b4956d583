"""Dataset registry: every dataset by name, with what evaluation applies to it."""

from __future__ import annotations

from collections.abc import Callable

from mcbench.datasets.base import Dataset
from mcbench.datasets.mixtures import GaussianMixture2D, grid, grid_veegan, ring, ring_veegan
from mcbench.errors import McbenchError

DATASETS: dict[str, Callable[[], Dataset]] = {
    "ring": ring,
    "grid": grid,
    "ring-veegan": ring_veegan,
    "grid-veegan": grid_veegan,
}


def get_dataset(name: str) -> Dataset:
    """The dataset registered as `name`; a one-line error names the valid choices."""
    try:
        factory = DATASETS[name]
    except KeyError:
        raise McbenchError(
            f"unknown dataset {name!r}; choices: {', '.join(sorted(DATASETS))}"
        ) from None
    return factory()


__all__ = ["DATASETS", "Dataset", "GaussianMixture2D", "get_dataset"]
