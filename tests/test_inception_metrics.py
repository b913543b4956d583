"""FID, KID and Inception Score on CIFAR-10 / CelebA: weights found locally or a
one-line error saying where to put them; nothing downloaded (the download functions fail
the test if called); the evaluation path with a tiny stand-in network (identical sets,
closed forms); the Inception Score's closed forms; and, where torch-fidelity is
installed, its real network on local weights and its formulas against ours."""

from __future__ import annotations

import importlib.util
import math
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from mcbench.cli import main
from mcbench.datasets import get_dataset
from mcbench.datasets.images import NaturalImageDataset, load_cifar10
from mcbench.errors import McbenchError
from mcbench.metrics import inception as inc
from mcbench.metrics import metric_spec
from mcbench.metrics.features import KidReference, frechet_distance, gaussian_stats, kid
from mcbench.metrics.prdc import PRDC_METRICS


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No test reads a developer's data folder or weights, or writes the real cache."""
    monkeypatch.setenv("MCBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MCBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(inc.WEIGHTS_ENV, raising=False)


def write_cifar(root, per_batch: int = 8) -> np.ndarray:
    """A CIFAR-10 python folder of 5 x per_batch random images; returns them (N, 3072)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    g = np.random.default_rng(0)
    data = g.integers(0, 256, (5 * per_batch, 3072), dtype=np.uint8)
    for i in range(5):
        part = data[i * per_batch : (i + 1) * per_batch]
        with open(folder / f"data_batch_{i + 1}", "wb") as fh:
            pickle.dump({b"data": part, b"labels": [0] * per_batch}, fh)
    return data


# -- where the weights are looked for -------------------------------------------------------


def test_missing_weights_name_the_file_and_the_folder(tmp_path, monkeypatch):
    with pytest.raises(McbenchError) as err:
        inc.weights_path(tmp_path / "data")
    text = str(err.value)
    assert inc.INCEPTION_FILE in text and str(tmp_path / "data" / "inception") in text
    assert "nothing is downloaded" in text and "\n" not in text
    monkeypatch.setenv(inc.WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(McbenchError, match=r"\$MCBENCH_INCEPTION_WEIGHTS is .*nowhere\.pth"):
        inc.weights_path(tmp_path / "data")
    put = tmp_path / "data" / "inception" / inc.INCEPTION_FILE
    put.parent.mkdir(parents=True)
    put.write_bytes(b"weights")
    monkeypatch.delenv(inc.WEIGHTS_ENV)
    assert inc.weights_path(tmp_path / "data") == put
    monkeypatch.setenv(inc.WEIGHTS_ENV, str(put))
    assert inc.weights_path(tmp_path / "elsewhere") == put


def test_library_absent_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # `import` raises ImportError
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(McbenchError) as err:
        inc.load_fidelity()
    assert "pip install 'mcbench[fid]'" in str(err.value) and "\n" not in str(err.value)


def fail(*args, **kwargs):
    raise AssertionError(f"called: {args}")


def test_cifar10_run_and_evaluate_refuse_without_weights(tmp_path, capsys, monkeypatch):
    """The data is there, the weights are not: `mcbench run` stops before any work and
    `mcbench evaluate` says the same, in one line each; no download is tried and no
    network is built."""
    for name in ("load_state_dict_from_url", "download_url_to_file"):
        monkeypatch.setattr(torch.hub, name, fail)
    monkeypatch.setattr(inc, "FidelityInception", fail)
    write_cifar(tmp_path / "data")
    ds = get_dataset("cifar10")
    with pytest.raises(McbenchError, match=inc.INCEPTION_FILE):
        ds.check()
    out = tmp_path / "out"
    assert main(["run", "-m", "gan", "-d", "cifar10", "--steps", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and inc.INCEPTION_FILE in err[0] and not out.exists()
    np.save(tmp_path / "s.npy", np.zeros((4, 3, 32, 32), np.float32))
    assert main(["evaluate", "cifar10", str(tmp_path / "s.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "data" / "inception") in err[0]


# -- the evaluation path, with a tiny stand-in network -----------------------------------------


class TinyNet:
    """An `Extractor`: 4x4 average-pooled pixels (48 features) and 10 logits from a fixed
    linear map; counts the images it reads."""

    def __init__(self, identity: str = "tiny") -> None:
        self.identity = identity
        self.w = torch.randn(48, 10, generator=torch.Generator().manual_seed(0))
        self.seen = 0

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert images.dtype == torch.uint8  # what torch-fidelity's network reads
        self.seen += len(images)
        pool = torch.nn.functional.avg_pool2d(images.float() / 255, 8).flatten(1)
        return pool, pool @ self.w


def tiny_cifar(root, net: TinyNet) -> NaturalImageDataset:
    return NaturalImageDataset(
        "cifar10",
        "cifar10",
        (3, 32, 32),
        lambda: load_cifar10(root),
        dict,
        extractor=net,
    )


def test_evaluation_of_the_real_images_themselves(tmp_path):
    """The 40 real images (all of the reference) as samples: FID 0, PRDC 1, KID the
    unbiased estimator's identical-set value (every subset holds all 40), IS that of
    the network's logits of these images."""
    write_cifar(tmp_path / "data")
    net = TinyNet()
    ds = tiny_cifar(tmp_path / "data", net)
    ds.check()  # the data is there; a stand-in network needs no weights
    real = ds.images().float() / 255
    m = ds.evaluate(real)
    assert set(m) == set(ds.metrics()) == {*inc.INCEPTION_METRICS, *PRDC_METRICS}
    assert m["fid"] == pytest.approx(0.0, abs=1e-9)
    assert {k: m[k] for k in PRDC_METRICS} == dict.fromkeys(PRDC_METRICS, 1.0)
    pool, logits = net(ds.images())
    f = pool.double().numpy()
    k = (f @ f.T / f.shape[1] + 1) ** 3
    n = len(f)
    off = (k.sum() - np.trace(k)) / (n * (n - 1))
    # (kernel products in float32: a relative error near 1e-6 on this small difference)
    assert m["kid"] == pytest.approx(2 / n * (off - np.trace(k) / n), rel=1e-4)
    assert m["inception_score"] == pytest.approx(inc.inception_score(logits.double()))
    # a shifted set: FID is the Fréchet distance of the two Gaussians of features
    shifted = (real * 0.5).round(decimals=3)
    got = ds.evaluate(shifted)["fid"]
    fake = net(inc.to_uint8(shifted))[0]
    assert got == pytest.approx(frechet_distance(*gaussian_stats(f), *gaussian_stats(fake)))


def test_reference_features_are_cached_by_network_and_data(tmp_path):
    write_cifar(tmp_path / "data")
    first = TinyNet()
    x = torch.rand(12, 3, 32, 32)
    want = tiny_cifar(tmp_path / "data", first).evaluate(x)
    assert first.seen == 40 + 12
    again = TinyNet()  # a new process: the real images' features come from the cache
    assert tiny_cifar(tmp_path / "data", again).evaluate(x) == pytest.approx(want)
    assert again.seen == 12
    assert len(list((tmp_path / "cache").glob("inception-cifar10-*.npy"))) == 1
    other = TinyNet("another network")
    tiny_cifar(tmp_path / "data", other).evaluate(x)
    assert other.seen == 52 and len(list((tmp_path / "cache").glob("inception-*.npy"))) == 2


def test_few_samples_leave_the_split_metrics_undefined(tmp_path):
    write_cifar(tmp_path / "data")
    m = tiny_cifar(tmp_path / "data", TinyNet()).evaluate(torch.rand(5, 3, 32, 32))
    assert math.isnan(m["inception_score"]) and math.isnan(m["coverage"])  # < 10 splits; k = 5
    assert math.isfinite(m["fid"]) and math.isfinite(m["kid"])


# -- the Inception Score's closed forms ---------------------------------------------------------


def test_inception_score_closed_forms():
    """Identical class probabilities: p(y|x) = p(y), IS = 1. Confident and balanced over
    C classes: KL = log C, IS = C. Two classes, half the samples (0.8, 0.2) and half
    (0.2, 0.8): p(y) = (1/2, 1/2), IS = exp(0.8 ln 1.6 + 0.2 ln 0.4)."""
    assert inc.inception_score(np.tile([1.0, 2.0, 3.0], (40, 1))) == pytest.approx(1.0)
    c = 8
    onehot = 60.0 * np.eye(c)[np.arange(10 * c) % c]
    assert inc.inception_score(onehot, splits=1) == pytest.approx(c, rel=1e-12)
    z = np.log(np.array([[0.8, 0.2], [0.2, 0.8]] * 50))
    want = math.exp(0.8 * math.log(1.6) + 0.2 * math.log(0.4))
    assert inc.inception_score(z, splits=1) == pytest.approx(want, rel=1e-12)
    with pytest.raises(McbenchError, match="splits"):
        inc.inception_score(np.zeros((5, 3)))


def test_declarations():
    fid, kd, score = (metric_spec(n) for n in inc.INCEPTION_METRICS)
    assert fid.direction == kd.direction == "lower" and score.direction == "higher"
    assert fid.role == score.role == "quality" and kd.role == "detail"
    assert score.lower == 1.0 and kd.lower is None


# -- torch-fidelity itself, where installed ---------------------------------------------------


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    """The names torch-fidelity's package imports from torchvision when it loads (its
    datasets and its other networks'); the Inception network uses none of them."""
    tv = types.ModuleType("torchvision")
    datasets = types.ModuleType("torchvision.datasets")
    for name in ("CIFAR10", "CIFAR100", "STL10"):
        setattr(datasets, name, type(name, (), {}))
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    tv.datasets, tv.transforms, transforms.functional = datasets, transforms, functional
    return {
        "torchvision": tv,
        "torchvision.datasets": datasets,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
    }


@pytest.fixture
def fidelity(monkeypatch):
    """torch-fidelity, imported for real (skipped where not installed). A CPU-only torch
    cannot load PyPI's torchvision (built for CUDA torch); then a stand-in gives the
    package the torchvision names it imports at load time."""
    if importlib.util.find_spec("torch_fidelity") is None:
        pytest.skip("torch-fidelity is not installed (pip install 'mcbench[fid]')")
    before = set(sys.modules)
    try:
        import torchvision  # noqa: F401
    except Exception:
        for name, module in _torchvision_stand_in().items():
            monkeypatch.setitem(sys.modules, name, module)
    import torch_fidelity

    yield torch_fidelity
    for name in set(sys.modules) - before:  # nothing of it outlives the test
        if name.startswith("torch_fidelity"):
            del sys.modules[name]


def test_torch_fidelity_network_loads_local_weights_without_downloading(
    fidelity, tmp_path, monkeypatch
):
    """Weights written from a randomly initialised network (no real ones here) load
    from $MCBENCH_DATA/inception; every download function fails the test if called."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    cls = fe.FeatureExtractorInceptionV3
    with monkeypatch.context() as m:  # a random network, to have a file of the right form
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(cls, "load_state_dict", lambda self, *a, **k: None)
        state = cls("inception-v3-compat", ["2048"]).state_dict()
    path = tmp_path / "data" / "inception" / inc.INCEPTION_FILE
    path.parent.mkdir(parents=True)
    torch.save(state, path)

    monkeypatch.setattr(fe, "load_state_dict_from_url", fail)  # a download fails the test
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    assert inc.check_inception(tmp_path / "data") == path
    net = inc.FidelityInception(inc.weights_path(tmp_path / "data"), torch.device("cpu"))
    assert net.identity.startswith("torch-fidelity inception-v3-compat ")
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    pool, logits = inc.extract(net, images)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    assert np.isfinite(pool).all() and (pool >= 0).all()  # after the last ReLU and pool
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not weights")
    with pytest.raises(McbenchError, match="cannot load Inception weights"):
        inc.FidelityInception(bad, torch.device("cpu"))


def test_our_formulas_equal_torch_fidelitys(fidelity):
    from torch_fidelity.metric_fid import fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    g = np.random.default_rng(0)
    a = np.abs(g.standard_normal((300, 16)))
    b = np.abs(1.2 * g.standard_normal((300, 16)) + 0.3)
    sa, sb = gaussian_stats(a), gaussian_stats(b)
    theirs = fid_statistics_to_metric(
        {"mu": sa[0], "sigma": sa[1]}, {"mu": sb[0], "sigma": sb[1]}, verbose=False
    )
    assert frechet_distance(*sa, *sb) == pytest.approx(theirs["frechet_inception_distance"])
    logits = torch.from_numpy(g.standard_normal((200, 12)) * 3)
    theirs = isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=inc.IS_SEED)
    assert inc.inception_score(logits) == pytest.approx(theirs["inception_score_mean"], rel=1e-9)
    # subsets holding all 300 samples: both average the same MMD^2_u
    theirs = kid_features_to_metric(
        torch.from_numpy(a).float(),
        torch.from_numpy(b).float(),
        kid_subsets=2,
        kid_subset_size=300,
        verbose=False,
    )
    ours = kid(a.astype(np.float32), b.astype(np.float32), subsets=2, subset_size=300)[0]
    assert ours == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)
    assert KidReference(a, 2, 300)(b)[0] == pytest.approx(ours, rel=1e-6)
