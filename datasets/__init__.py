"""Dataset registry: every dataset by name, with what evaluation applies to it."""

from __future__ import annotations

from collections.abc import Callable

from mcbench.datasets.base import Dataset
from mcbench.datasets.images import ImageDataset, celeba, cifar10
from mcbench.datasets.mixtures import GaussianMixture2D, grid, grid_veegan, ring, ring_veegan
from mcbench.datasets.mnist import mnist
from mcbench.datasets.stacked_mnist import stacked_mnist, stacked_mnist_d
from mcbench.errors import McbenchError, did_you_mean

DATASETS: dict[str, Callable[[], Dataset]] = {
    "ring": ring,
    "grid": grid,
    "ring-veegan": ring_veegan,
    "grid-veegan": grid_veegan,
    "mnist": mnist,
    "stacked-mnist": stacked_mnist,
    "stacked-mnist-d0.5": lambda: stacked_mnist_d("0.5"),
    "stacked-mnist-d0.25": lambda: stacked_mnist_d("0.25"),
    "cifar10": cifar10,
    "celeba": celeba,
}


def get_dataset(name: str) -> Dataset:
    """The dataset registered as `name`; a one-line error names the valid choices."""
    try:
        factory = DATASETS[name]
    except KeyError:
        raise McbenchError(
            f"unknown dataset {name!r}{did_you_mean(name, DATASETS)}; "
            f"choices: {', '.join(sorted(DATASETS))}"
        ) from None
    return factory()


__all__ = ["DATASETS", "Dataset", "GaussianMixture2D", "ImageDataset", "get_dataset"]
