"""Image datasets held in memory as uint8 tensors, served in [0, 1] (the protocol's
generators end in a sigmoid): the shared base, the data folder, sample grids, and
CIFAR-10 and CelebA (64x64) from their standard local layouts.

Data folder: ``$MCBENCH_DATA`` (default ``~/mcbench-data``). Nothing is downloaded:
    $MCBENCH_DATA/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    $MCBENCH_DATA/cifar-10-batches-py/data_batch_{1..5}      (CIFAR-10 python version)
    $MCBENCH_DATA/celeba/img_align_celeba/*.jpg               (aligned CelebA JPEGs)
    $MCBENCH_DATA/inception/weights-inception-2015-12-05-6726825d.pth
                                 (torch-fidelity's Inception v3, for FID/KID/IS; or
                                  $MCBENCH_INCEPTION_WEIGHTS)
Decoded CelebA crops and the real images' Inception features are cached under
``$MCBENCH_CACHE`` (default ~/.cache/mcbench).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mcbench.datasets.base import Dataset
from mcbench.errors import McbenchError
from mcbench.metrics.inception import INCEPTION_METRICS, InceptionEvaluator, check_inception
from mcbench.metrics.prdc import PRDC_METRICS

GRID_FILE = "samples.png"


def data_root() -> Path:
    """Folder holding local copies of the image datasets (``$MCBENCH_DATA``)."""
    return Path(os.environ.get("MCBENCH_DATA") or Path.home() / "mcbench-data").expanduser()


def cache_root() -> Path:
    """Folder for things the harness builds once (classifier, decoded crops)."""
    return Path(os.environ.get("MCBENCH_CACHE") or Path.home() / ".cache" / "mcbench").expanduser()


def as_images(samples: np.ndarray | torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Validate images for evaluation: (N, C, H, W), (N, H, W, C) or flat (N, C*H*W), in
    [0, 1] (uint8 is divided by 255), all finite. Returns float32 (N, C, H, W) on CPU."""
    x = samples.detach().cpu() if torch.is_tensor(samples) else torch.as_tensor(np.asarray(samples))
    c, h, w = shape
    n = x.shape[0] if x.ndim else 0
    if n == 0:
        raise McbenchError(f"samples must hold at least one image of shape {shape}")
    if tuple(x.shape[1:]) == (c, h, w):
        pass
    elif tuple(x.shape[1:]) == (h, w, c):
        x = x.permute(0, 3, 1, 2)
    elif tuple(x.shape[1:]) == (c * h * w,):
        x = x.reshape(n, c, h, w)
    elif c == 1 and tuple(x.shape[1:]) == (h, w):
        x = x.reshape(n, 1, h, w)
    else:
        raise McbenchError(
            f"samples must have shape (N, {c}, {h}, {w}), (N, {h}, {w}, {c}) or "
            f"(N, {c * h * w}), got {tuple(x.shape)}"
        )
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise McbenchError(f"samples must be numbers, got dtype {x.dtype}")
    x = x.float()
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x.reshape(n, -1))).any(dim=1).sum())
        raise McbenchError(f"samples contain NaN or inf values ({bad} of {n} images)")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise McbenchError(
            f"pixel values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}] (scale images first)"
        )
    if lo < 0 or hi > 1:
        x = x.clamp(0, 1)  # never in place: x may share memory with the caller's array
    return x.contiguous()


def save_grid(images: torch.Tensor, path: Path, nrow: int = 10, pad: int = 2) -> Path:
    """A PNG grid of up to nrow*nrow images (N, C, H, W) in [0, 1]; C = 1 gray, 3 RGB."""
    from PIL import Image

    x = images[: nrow * nrow].detach().float().cpu().clamp(0, 1)
    n, c, h, w = x.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = torch.ones(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        r, k = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        grid[:, top : top + h, left : left + w] = x[i]
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr[:, :, 0] if c == 1 else arr).save(path)
    return path


class ImageDataset(Dataset):
    """Images in memory (uint8, N x C x H x W), sampled uniformly with replacement.

    `load` is called on first use (so listing datasets stays cheap and a missing folder
    only matters when the data is needed); its result is cached per process.
    """

    def __init__(
        self,
        name: str,
        family: str,
        shape: tuple[int, int, int],
        load: Callable[[], torch.Tensor],
        describe: Callable[[], dict[str, Any]],
        check: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self.family = family  # type: ignore[misc]
        self.shape = tuple(shape)
        self._load = load
        self._describe = describe
        self._check = check
        self._on: dict[str, torch.Tensor] = {}

    def check(self) -> None:
        """A cheap look for the data files (suites call it before any work starts); a
        missing folder raises the same one-line error as loading would."""
        if self._check is not None:
            self._check()

    def images(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The whole uint8 image tensor on `device` (moved there once)."""
        key = str(device)
        if key not in self._on:
            self._on[key] = self._load().to(device)
        return self._on[key]

    def __len__(self) -> int:
        return len(self.images())

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        data = self.images(device)
        idx = torch.randint(len(data), (n,), generator=generator, device=device)
        return data[idx].float().div_(255.0)

    def evaluate(self, samples: np.ndarray | torch.Tensor) -> dict[str, float]:
        """No sample-quality metric by default: the samples are validated and judged by
        their grid (MNIST-based sets and natural images override this)."""
        as_images(samples, self.shape)
        return {}

    def metrics(self) -> tuple[str, ...]:
        return ()

    def artifacts(self, samples: torch.Tensor, out_dir: Path) -> None:
        save_grid(as_images(samples[:100], self.shape), Path(out_dir) / GRID_FILE)

    def info(self) -> dict[str, Any]:
        return {**super().info(), **self._describe()}


class NaturalImageDataset(ImageDataset):
    """Natural images (CIFAR-10, CelebA) evaluated on Inception v3 features: FID, KID,
    Inception Score and PRDC (mcbench.metrics.inception), with the network's weights
    found locally. A run refuses to start (`check`) without torch-fidelity or the
    weights, with a one-line error saying what to install or where to put the file."""

    def __init__(self, *args: Any, extractor: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._extractor = extractor  # tests pass a small stand-in for the network
        self._evaluator: InceptionEvaluator | None = None

    def check(self) -> None:
        super().check()
        if self._extractor is None:
            check_inception(data_root())

    def evaluator(self) -> InceptionEvaluator:
        if self._evaluator is None:
            self._evaluator = InceptionEvaluator(
                self.name, self.images, data_root(), cache_root(), self._extractor
            )
        return self._evaluator

    def evaluate(self, samples: np.ndarray | torch.Tensor) -> dict[str, float]:
        return self.evaluator()(as_images(samples, self.shape))

    def metrics(self) -> tuple[str, ...]:
        return (*INCEPTION_METRICS, *PRDC_METRICS)


INCEPTION_EVALUATION = (
    "Inception v3 (torch-fidelity, local weights): FID, KID, Inception Score of the N "
    "generated samples against 10,000 real images; precision, recall, density, coverage "
    "on its pool features; sample grid"
)


# -- CIFAR-10 --------------------------------------------------------------------------

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_LAYOUT = f"$MCBENCH_DATA/{CIFAR_DIR}/data_batch_1..5 (CIFAR-10 python version)"


def _missing(what: str, layout: str, where: Path) -> McbenchError:
    return McbenchError(f"{what} not found at {where}: expected {layout}")


def cifar10_files(root: Path) -> list[Path]:
    folder = root / CIFAR_DIR
    files = [folder / f"data_batch_{i}" for i in range(1, 6)]
    if not all(f.is_file() for f in files):
        raise _missing("CIFAR-10", CIFAR_LAYOUT, folder)
    return files


@lru_cache(maxsize=2)
def load_cifar10(root: Path) -> torch.Tensor:
    """The 50,000 CIFAR-10 training images as uint8 (N, 3, 32, 32)."""
    files = cifar10_files(root)
    parts = []
    for f in files:
        try:
            with open(f, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            parts.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        except Exception as exc:
            raise McbenchError(f"cannot read CIFAR-10 batch {f}: {exc}") from None
    return torch.from_numpy(np.concatenate(parts))


def cifar10() -> ImageDataset:
    """CIFAR-10 training set (50,000 RGB 32x32), from a local copy."""
    root = data_root()
    return NaturalImageDataset(
        "cifar10",
        "cifar10",
        (3, 32, 32),
        lambda: load_cifar10(root),
        lambda: {
            "source": f"local folder {root / CIFAR_DIR}",
            "layout": CIFAR_LAYOUT,
            "evaluation": INCEPTION_EVALUATION,
        },
        lambda: cifar10_files(root),
    )


# -- CelebA -----------------------------------------------------------------------------

CELEBA_DIR = "celeba/img_align_celeba"
CELEBA_LAYOUT = f"$MCBENCH_DATA/{CELEBA_DIR}/*.jpg (aligned and cropped CelebA JPEGs)"
CELEBA_CROP = 108  # centre crop of the 178x218 aligned faces, resized to 64x64


def celeba_crop(path: Path, size: int = 64) -> np.ndarray:
    """One aligned face: the central CELEBA_CROP square, resized to size x size (HWC)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(CELEBA_CROP, w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


def celeba_check(root: Path) -> None:
    folder = root / CELEBA_DIR
    if not folder.is_dir() or next(folder.glob("*.jpg"), None) is None:
        raise _missing("CelebA", CELEBA_LAYOUT, folder)


@lru_cache(maxsize=2)
def load_celeba(root: Path, cache: Path) -> torch.Tensor:
    """All CelebA faces as uint8 (N, 3, 64, 64); decoded once and cached as .npy,
    keyed by the list of file names."""
    folder = root / CELEBA_DIR
    files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not files:
        raise _missing("CelebA", CELEBA_LAYOUT, folder)
    key = hashlib.sha256("\n".join(f.name for f in files).encode()).hexdigest()[:16]
    cached = cache / f"celeba64-{key}.npy"
    if cached.is_file():
        return torch.from_numpy(np.load(cached))
    print(f"mcbench: decoding {len(files)} CelebA images once -> {cached}", file=sys.stderr)
    arr = np.stack([celeba_crop(f) for f in files]).transpose(0, 3, 1, 2).copy()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, cached)
    return torch.from_numpy(arr)


def celeba() -> ImageDataset:
    """CelebA aligned faces, centre-cropped to 108x108 and resized to 64x64."""
    root, cache = data_root(), cache_root()
    return NaturalImageDataset(
        "celeba",
        "celeba",
        (3, 64, 64),
        lambda: load_celeba(root, cache),
        lambda: {
            "source": f"local folder {root / CELEBA_DIR}",
            "layout": CELEBA_LAYOUT,
            "preprocessing": f"centre crop {CELEBA_CROP}x{CELEBA_CROP}, bicubic resize 64x64",
            "evaluation": INCEPTION_EVALUATION,
        },
        lambda: celeba_check(root),
    )
