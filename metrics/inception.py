"""FID, KID and Inception Score of generated natural images (CIFAR-10, CelebA), on the
Inception v3 network of torch-fidelity (Obukhov et al., the `inception-v3-compat`
feature extractor: the TensorFlow FID/IS graph of 2015-12-05, its bilinear resize to
299 x 299 reproduced exactly), with weights found locally. Nothing is downloaded.

Weights: torch-fidelity's file ``weights-inception-2015-12-05-6726825d.pth``, looked for
at ``$MCBENCH_INCEPTION_WEIGHTS`` when set, else at
``$MCBENCH_DATA/inception/weights-inception-2015-12-05-6726825d.pth``; absent, a
one-line error says where to put it. torch-fidelity is an optional dependency
(``pip install 'mcbench[fid]'``), imported on first use; the network is built with an
explicit weights path, the one case in which torch-fidelity never downloads.

What the library gives: the network and its weights, pool features (2,048) and
'logits_unbiased' (1,008 classes, no bias) of uint8 images. The metrics are computed
from them by mcbench's own code (metrics/features.py), with torch-fidelity's formulas
and defaults (a test checks they agree where it is installed), so that they are tested
against closed forms on machines without it:
- fid: Fréchet distance of the pool features (Heusel et al. 2017), the N generated
  samples against REFERENCE_IMAGES real training images drawn with a fixed seed;
- kid: MMD^2_u with the cubic kernel (Binkowski et al. 2018) over 100 subsets of
  min(1,000, N) a side (torch-fidelity's defaults);
- inception_score: exp(E_x KL(p(y|x) || p(y))) on softmax('logits_unbiased'), the mean
  over 10 splits of the N samples shuffled with a fixed seed (Salimans et al. 2016,
  NeurIPS; torch-fidelity's isc_splits = 10).
All depend on N: published values use N = 50,000; compare runs at equal N only. The
real reference's features are computed once and cached in ``$MCBENCH_CACHE``.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from mcbench.errors import McbenchError
from mcbench.metrics.features import FeatureReference, reference_indices
from mcbench.metrics.prdc import PRDC_METRICS
from mcbench.metrics.registry import MetricSpec, register_metric
from mcbench.run.store import sha256_file

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_DIR = "inception"
WEIGHTS_ENV = "MCBENCH_INCEPTION_WEIGHTS"
# Real training images in the reference (fixed-seed draw): enough for 2,048-d
# statistics; the full 50,000 would take hours of Inception on a CPU. Cached once.
REFERENCE_IMAGES = 10_000
REFERENCE_SEED = 2017
IS_SPLITS = 10  # Salimans et al. 2016; torch-fidelity's isc_splits
IS_SEED = 2020  # torch-fidelity's rng_seed, for the shuffle before the splits
KID_SUBSETS = 100  # torch-fidelity's kid_subsets
CACHE_VERSION = 1

TORCH_FIDELITY = "torch-fidelity (Obukhov et al.), inception-v3-compat"
_N = f"the N generated samples against {REFERENCE_IMAGES:,} real training images (fixed seed)"
FID = MetricSpec(
    "fid",
    "lower",
    "FID",
    "Fréchet distance between Gaussians fitted to Inception v3 pool features (2,048) of "
    f"{_N}; depends on N (published values use 50,000).",
    f"Heusel et al. 2017 (NeurIPS); network and weights: {TORCH_FIDELITY}",
    lower=0.0,
)
KID = MetricSpec(
    "kid",
    "lower",
    "KID",
    "Unbiased MMD^2 with the kernel (x.y/2048 + 1)^3 on Inception v3 pool features, mean "
    f"over {KID_SUBSETS} subsets of min(1,000, N) a side, {_N}; can be slightly negative.",
    f"Binkowski et al. 2018 (ICLR); subsets as {TORCH_FIDELITY}",
    role="detail",
)
INCEPTION_SCORE = MetricSpec(
    "inception_score",
    "higher",
    "Inception Score",
    "exp(E KL(p(y|x) || p(y))) of the Inception v3 class probabilities (1,008 logits "
    f"without bias), mean over {IS_SPLITS} splits of the N generated samples; depends on N.",
    f"Salimans et al. 2016 (NeurIPS); splits as {TORCH_FIDELITY}",
    lower=1.0,
)
INCEPTION_SPECS: tuple[MetricSpec, ...] = tuple(
    register_metric(s) for s in (FID, KID, INCEPTION_SCORE)
)
INCEPTION_METRICS: tuple[str, ...] = tuple(s.name for s in INCEPTION_SPECS)


def weights_path(data_root: Path) -> Path:
    """The local Inception weights: $MCBENCH_INCEPTION_WEIGHTS, else
    data_root/inception/INCEPTION_FILE; a one-line error says where to put them."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        path = Path(env).expanduser()
        if path.is_file():
            return path
        raise McbenchError(
            f"${WEIGHTS_ENV} is {path}, which is not a file: point it at torch-fidelity's "
            f"{INCEPTION_FILE}"
        )
    path = Path(data_root) / INCEPTION_DIR / INCEPTION_FILE
    if not path.is_file():
        raise McbenchError(
            f"Inception weights not found: put torch-fidelity's {INCEPTION_FILE} (an asset "
            f"of its v0.2.0 release) in {path.parent}/ (or set ${WEIGHTS_ENV} to the file); "
            "nothing is downloaded"
        )
    return path


def load_fidelity() -> type:
    """torch-fidelity's Inception class, imported now; a one-line error if it cannot be."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception as exc:  # absent, or present with a broken torchvision
        why = (str(exc).splitlines() or [""])[0][:200]
        raise McbenchError(
            "FID, KID and IS need torch-fidelity: pip install 'mcbench[fid]' (import failed: "
            f"{type(exc).__name__}: {why})"
        ) from None
    return FeatureExtractorInceptionV3


def check_inception(data_root: Path) -> Path:
    """Before any work: the library imports and the weights file is where it should be."""
    path = weights_path(data_root)
    load_fidelity()
    return path


class Extractor(Protocol):
    """Maps uint8 images (n, 3, H, W) to (pool features (n, D), logits (n, C)); `identity`
    names the network and weights (part of the reference cache's key)."""

    identity: str

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class FidelityInception:
    """torch-fidelity's Inception v3 on local weights (an `Extractor`)."""

    def __init__(self, weights: Path, device: torch.device | None = None) -> None:
        cls = load_fidelity()
        self.device = device or _device()
        try:
            net = cls(
                "inception-v3-compat",
                ["2048", "logits_unbiased"],
                feature_extractor_weights_path=str(weights),
            )
        except Exception as exc:
            why = (str(exc).splitlines() or [""])[0][:200]
            raise McbenchError(
                f"cannot load Inception weights {weights}: {type(exc).__name__}: {why}"
            ) from None
        self.net = net.to(self.device).eval()
        self.identity = f"torch-fidelity inception-v3-compat {sha256_file(weights)[:16]}"

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool, logits = self.net(images.to(self.device))
        return pool.cpu(), logits.cpu()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as the uint8 pixels the network reads (round to nearest)."""
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def extract(
    extractor: Extractor, images: torch.Tensor, batch: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pool features and logits (float64) of images (N, 3, H, W): float in [0, 1] or uint8."""
    if batch is None:
        batch = 200 if torch.cuda.is_available() else 32
    pools, logits = [], []
    for s in range(0, len(images), batch):
        x = images[s : s + batch]
        p, q = extractor(x if x.dtype == torch.uint8 else to_uint8(x))
        pools.append(p.double())
        logits.append(q.double())
    return torch.cat(pools).numpy(), torch.cat(logits).numpy()


def inception_score(
    logits: np.ndarray | torch.Tensor, splits: int = IS_SPLITS, seed: int = IS_SEED
) -> float:
    """exp(mean_x KL(p(y|x) || p(y))) per split, p(y) the split's mean of p(y|x); the mean
    over `splits` splits of the samples shuffled with `seed` (torch-fidelity's order)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if z.ndim != 2 or len(z) < splits or splits < 1:
        raise McbenchError(
            f"the Inception Score needs logits (N, C) with N >= splits = {splits}, got "
            f"{tuple(z.shape)}"
        )
    z = z[np.random.RandomState(seed).permutation(len(z))]
    log_p = z.log_softmax(1)
    scores = []
    for i in range(splits):
        lp = log_p[i * len(z) // splits : (i + 1) * len(z) // splits]
        log_q = lp.exp().mean(0).log()
        scores.append(math.exp(float((lp.exp() * (lp - log_q)).sum(1).mean())))
    return float(np.mean(scores))


class InceptionEvaluator:
    """FID, KID, IS and PRDC (on pool features) of generated images against a dataset's
    real reference, whose features are computed once and cached on disk."""

    def __init__(
        self,
        dataset: str,
        real_images: Callable[[], torch.Tensor],
        data_root: Path,
        cache_dir: Path,
        extractor: Extractor | None = None,
    ) -> None:
        self.dataset = dataset
        self._real_images = real_images
        self.data_root, self.cache_dir = Path(data_root), Path(cache_dir)
        self._extractor = extractor
        self._reference: FeatureReference | None = None

    def extractor(self) -> Extractor:
        if self._extractor is None:
            self._extractor = FidelityInception(weights_path(self.data_root))
        return self._extractor

    def reference_features(self) -> np.ndarray:
        """Pool features of the real reference: from the cache, or computed now."""
        net = self.extractor()
        images = self._real_images()
        idx = reference_indices(len(images), REFERENCE_IMAGES, REFERENCE_SEED)
        chosen = images[torch.from_numpy(idx)]
        key = hashlib.sha256()
        for part in (str(CACHE_VERSION), net.identity, self.dataset, str(len(images))):
            key.update(part.encode() + b"\0")
        key.update(chosen.numpy().tobytes())
        path = self.cache_dir / f"inception-{self.dataset}-{key.hexdigest()[:16]}.npy"
        if path.is_file():
            try:
                return np.load(path).astype(np.float64)
            except Exception as exc:  # unreadable: computed again
                print(f"mcbench: ignoring unreadable cache {path}: {exc}", file=sys.stderr)
        print(
            f"mcbench: Inception features of {len(idx):,} real {self.dataset} images, once "
            f"-> {path}",
            file=sys.stderr,
        )
        feats = extract(net, chosen)[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, feats.astype(np.float32))
        os.replace(tmp, path)
        return feats.astype(np.float32).astype(np.float64)  # as read back from the cache

    def reference(self) -> FeatureReference:
        if self._reference is None:
            self._reference = FeatureReference(
                self.reference_features(), KID_SUBSETS, device=_device()
            )
        return self._reference

    def __call__(self, images: torch.Tensor) -> dict[str, float]:
        """fid, kid, inception_score, precision, recall, density, coverage of images in
        [0, 1] (N, 3, H, W)."""
        pool, logits = extract(self.extractor(), images)
        scores = self.reference()(pool)
        n = len(images)
        return {
            "fid": scores["fd"],
            "kid": scores["kid"],
            "inception_score": inception_score(logits) if n >= IS_SPLITS else math.nan,
            **{k: scores[k] for k in PRDC_METRICS},
        }
