"""The mode-counting MNIST classifier, trained by the harness on the MNIST source in use.

Stacked MNIST modes are read by classifying each channel with a CNN trained on MNIST
(LBT and VEEGAN papers). Nothing is downloaded: the classifier is trained once on the
source's training split, its accuracy measured on the source's held-out split, and the
weights cached at ``$MCBENCH_CACHE/mnist-classifier-<key>.pt`` (default cache folder
~/.cache/mcbench), where the key hashes the source's decoded digits and the recipe. A
different source or recipe trains a new one; an unreadable cache file is retrained.

Training never touches the global RNG (it runs in a forked RNG state with its own
seed), so whether the cache existed cannot change a run that evaluates mid-training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mcbench.datasets.images import cache_root
from mcbench.datasets.mnist_source import MnistSource
from mcbench.metrics.features import (
    CLASSIFIER_KID_SUBSETS,
    CLASSIFIER_REFERENCE,
    FeatureReference,
    reference_indices,
)
from mcbench.metrics.prdc import PRDC_METRICS

CLASSIFIER_VERSION = 1
PREDICT_CHUNK = 256  # small chunks stay in cache: 3x faster than 8192 on one CPU core


@dataclass(frozen=True)
class Recipe:
    """How the classifier is trained; part of the cache key."""

    channels: tuple[int, int] = (16, 32)
    hidden: int = 128
    passes: int = 48_000  # training images seen in total (>= 1 epoch of any source)
    min_epochs: int = 2
    batch_size: int = 64
    lr: float = 2e-3
    shift: int = 2  # random translations of up to this many pixels (augmentation)
    seed: int = 0
    max_train: int | None = None  # use only the first N training digits (tests)

    def epochs(self, n_train: int) -> int:
        return max(self.min_epochs, math.ceil(self.passes / n_train))


class MnistCNN(nn.Module):
    """Two conv blocks (3x3, batch norm, ReLU, 2x2 max-pool) and a small dense head."""

    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 128) -> None:
        super().__init__()
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * 7 * 7, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer (after its ReLU): the embedding FD, KID and PRDC use."""
        return self.net[:-1](x)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from `features(x)`: forward(x) == head(features(x)), the same ops."""
        return self.net[-1](h)


class Classifier:
    """A trained MnistCNN with its metadata; `predict` maps images to digits."""

    def __init__(self, net: MnistCNN, meta: dict[str, Any]) -> None:
        self.net = net.eval()
        self.meta = meta

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> np.ndarray:
        """Digits of images (N, C, 28, 28) in [0, 1]: every channel is classified on its
        own; returns int64 (N, C)."""
        n, c = images.shape[:2]
        device = next(self.net.parameters()).device
        flat = images.reshape(n * c, 1, 28, 28)
        out = [
            self.net(flat[s : s + PREDICT_CHUNK].to(device, torch.float32)).argmax(1).cpu()
            for s in range(0, n * c, PREDICT_CHUNK)
        ]
        return torch.cat(out).reshape(n, c).numpy().astype(np.int64)

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """Digits (N, C) as `predict`, and in the same pass each image's penultimate
        features, the C channels' concatenated: float32 (N, C * hidden) on the CPU."""
        n, c = images.shape[:2]
        device = next(self.net.parameters()).device
        flat = images.reshape(n * c, 1, 28, 28)
        digits, feats = [], []
        for s in range(0, n * c, PREDICT_CHUNK):
            h = self.net.features(flat[s : s + PREDICT_CHUNK].to(device, torch.float32))
            digits.append(self.net.head(h).argmax(1).cpu())
            feats.append(h.float().cpu())
        d = torch.cat(digits).reshape(n, c).numpy().astype(np.int64)
        return d, torch.cat(feats).reshape(n, -1)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random integer translations per image (zero fill), drawn from `gen`."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n, 1), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (n, 1), generator=gen, device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]
    out = pad.gather(2, rows.expand(n, 1, h, pad.shape[3]))
    return out.gather(3, cols.expand(n, 1, h, w))


def _to_float(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.tensor(a, device=device).float().div_(255.0).unsqueeze(1)


@torch.no_grad()
def accuracy(net: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of `images` (uint8 N x 28 x 28) classified as `labels`."""
    net.eval()
    device = next(net.parameters()).device
    clf = Classifier(net, {})  # type: ignore[arg-type]
    pred = clf.predict(_to_float(images, device))[:, 0]
    return float((pred == labels.astype(np.int64)).mean())


def train_classifier(source: MnistSource, recipe: Recipe | None = None) -> Classifier:
    """Train an MnistCNN on the source's training digits; accuracy on its held-out ones."""
    recipe = recipe or Recipe()
    device = _device()
    x_np, y_np = source.train_images, source.train_labels
    if recipe.max_train is not None:
        x_np, y_np = x_np[: recipe.max_train], y_np[: recipe.max_train]
    x = _to_float(x_np, device)
    y = torch.from_numpy(y_np.astype(np.int64)).to(device)
    epochs = recipe.epochs(len(x))
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(recipe.seed)
        gen = torch.Generator(device=device).manual_seed(recipe.seed)
        net = MnistCNN(recipe.channels, recipe.hidden).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
        steps = epochs * math.ceil(len(x) / recipe.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=steps)
        net.train()
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=gen, device=device)
            for s in range(0, len(x), recipe.batch_size):
                idx = perm[s : s + recipe.batch_size]
                loss = F.cross_entropy(net(_shift(x[idx], recipe.shift, gen)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    train_time = time.perf_counter() - t0
    meta = {
        "version": CLASSIFIER_VERSION,
        "source": source.name,
        "source_description": source.description,
        "source_sha256": source.sha256,
        "recipe": dataclasses.asdict(recipe),
        "train_digits": len(x),
        "test_digits": len(source.test_labels),
        "epochs": epochs,
        "train_accuracy": accuracy(net, x_np, y_np),
        "test_accuracy": accuracy(net, source.test_images, source.test_labels),
        "train_time_s": train_time,
        "device": str(device),
    }
    return Classifier(net.eval(), meta)


def cache_path(source: MnistSource, recipe: Recipe | None = None, cache_dir=None) -> Path:
    """Where the classifier for (source, recipe) is cached."""
    recipe = recipe or Recipe()
    blob = json.dumps(
        [CLASSIFIER_VERSION, source.sha256, dataclasses.asdict(recipe)], sort_keys=True
    )
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return Path(cache_dir or cache_root()) / f"mnist-classifier-{key}.pt"


_LOADED: dict[str, Classifier] = {}


def _read(path: Path) -> Classifier | None:
    try:
        blob = torch.load(path, map_location=_device(), weights_only=True)
        meta = blob["meta"]
        recipe = meta["recipe"]
        net = MnistCNN(tuple(recipe["channels"]), recipe["hidden"]).to(_device())
        net.load_state_dict(blob["state_dict"])
        return Classifier(net, meta)
    except Exception as exc:  # unreadable or stale: retrain
        print(f"mcbench: ignoring unreadable classifier cache {path}: {exc}", file=sys.stderr)
        return None


def get_classifier(
    source: MnistSource, recipe: Recipe | None = None, cache_dir: Path | str | None = None
) -> Classifier:
    """The classifier for `source`: from memory, from the disk cache, or trained now."""
    path = cache_path(source, recipe, cache_dir)
    key = str(path)
    if key in _LOADED:
        return _LOADED[key]
    clf = _read(path) if path.is_file() else None
    if clf is None:
        print(
            f"mcbench: training the MNIST mode classifier on {source.name} (once) -> {path}",
            file=sys.stderr,
        )
        clf = train_classifier(source, recipe)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        state = {k: v.cpu() for k, v in clf.net.state_dict().items()}
        torch.save({"state_dict": state, "meta": clf.meta}, tmp)
        os.replace(tmp, path)
        acc = clf.meta["test_accuracy"]
        print(f"mcbench: classifier held-out accuracy {100 * acc:.2f}%", file=sys.stderr)
    _LOADED[key] = clf
    return clf


def cached_info(
    source: MnistSource, recipe: Recipe | None = None, cache_dir: Path | str | None = None
) -> dict[str, Any] | str:
    """The cached classifier's metadata (accuracy, source), without training one."""
    path = cache_path(source, recipe, cache_dir)
    clf = _LOADED.get(str(path)) or (_read(path) if path.is_file() else None)
    if clf is None:
        return "not trained yet (trained on first evaluation)"
    keep = ("source", "train_digits", "test_digits", "epochs", "test_accuracy", "train_time_s")
    return {**{k: clf.meta[k] for k in keep}, "cache": str(path)}


# Real reference features per classifier (held while the classifier is), per dataset key.
_REFERENCES: weakref.WeakKeyDictionary[Any, dict[str, FeatureReference]] = (
    weakref.WeakKeyDictionary()
)
CLASSIFIER_REFERENCE_SEED = 2016


def reference_images(images: torch.Tensor, seed: int = CLASSIFIER_REFERENCE_SEED) -> torch.Tensor:
    """The real images of a dataset's feature reference: all of them up to
    CLASSIFIER_REFERENCE, else a fixed-seed draw of that many."""
    idx = reference_indices(len(images), CLASSIFIER_REFERENCE, seed)
    return images[torch.from_numpy(idx)]


def feature_metrics(
    clf: Any, key: str, real_images: Callable[[], torch.Tensor], features: torch.Tensor
) -> dict[str, float]:
    """fd_classifier, kid_classifier and PRDC of generated images' classifier features
    (`Classifier.embed`) against the real reference `real_images()` (float in [0, 1]),
    whose features are computed once per classifier and `key`."""
    refs = _REFERENCES.setdefault(clf, {})
    if key not in refs:
        real = clf.embed(real_images())[1]
        refs[key] = FeatureReference(real, CLASSIFIER_KID_SUBSETS, device=_device())
    m = refs[key](features)
    return {
        "fd_classifier": m["fd"],
        "kid_classifier": m["kid"],
        **{k: m[k] for k in PRDC_METRICS},
    }
