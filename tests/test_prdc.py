"""Precision, recall, density and coverage (Naeem et al. 2020): identical sets, disjoint
sets, a case computed by hand (with points exactly on ball boundaries), the expectations
for two samples of one distribution (Lemmas 1 and 2), the k-d tree and the chunked
distance-matrix routes against each other, and the 2-D datasets' evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mcbench.datasets import get_dataset
from mcbench.errors import McbenchError
from mcbench.metrics import metric_spec
from mcbench.metrics import prdc as prdc_mod
from mcbench.metrics.prdc import (
    PRDC_METRICS,
    PRDC_SAMPLES,
    PrdcReference,
    expected_coverage,
    knn_radii,
    prdc,
)

METHODS = ["kdtree", "brute"]


def on_line(*xs: float) -> np.ndarray:
    """Points of the real line, as 2-D samples (y = 0)."""
    return np.stack([np.array(xs, dtype=np.float64), np.zeros(len(xs))], axis=1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dim", [2, 12])
def test_identical_sets_score_one(method, dim):
    """Each open ball holds its centre and the k - 1 nearer neighbours, not the k-th on
    its boundary: density = (1 + (k - 1)) / k = 1 exactly; the rest are 1."""
    x = np.random.default_rng(dim).standard_normal((400, dim))
    for k in (1, 3, 5):
        m = prdc(x, x.copy(), k=k, method=method)
        assert m == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}


@pytest.mark.parametrize("method", METHODS)
def test_disjoint_far_apart_sets_score_zero(method):
    g = np.random.default_rng(1)
    real = g.standard_normal((300, 3))
    fake = g.standard_normal((300, 3)) + 1e3
    m = prdc(real, fake, method=method)
    assert m == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


@pytest.mark.parametrize("method", METHODS)
def test_hand_computed_case(method):
    """Real {0, 1, 3, 7}, fake {0.5, 2, 12, 13} on a line.
    k = 1: real radii 1, 1, 2, 4; fake radii 1.5, 1.5, 1, 1. Fake 0.5 lies in the balls of
    0 and 1, fake 2 only in that of 3 (it is exactly 1 from 1: on the boundary, out),
    12 and 13 in none: precision 2/4, density 3/4. Reals 0, 1, 3 have a fake inside their
    ball, 7 not (nearest fake 12, 5 > 4): coverage 3/4. Fake balls (-1, 2), (0.5, 3.5),
    (11, 13), (12, 14) hold reals 0, 1, 3: recall 3/4.
    k = 2: real radii 3, 2, 3, 6; fake radii 11.5, 10, 10, 11. Fakes 0.5, 2, 12 are in
    3, 4 and 1 real balls, 13 in none (exactly 6 from 7): precision 3/4, density 8/8;
    every real ball holds a fake and every real lies within 11.5 of 0.5: 1 and 1."""
    real, fake = on_line(0, 1, 3, 7), on_line(0.5, 2, 12, 13)
    np.testing.assert_array_equal(knn_radii(real, 1, method), [1, 1, 2, 4])
    np.testing.assert_array_equal(knn_radii(fake, 2, method), [11.5, 10, 10, 11])
    assert prdc(real, fake, k=1, method=method) == pytest.approx(
        {"precision": 0.5, "recall": 0.75, "density": 0.75, "coverage": 0.75}, abs=1e-15
    )
    assert prdc(real, fake, k=2, method=method) == pytest.approx(
        {"precision": 0.75, "recall": 1.0, "density": 1.0, "coverage": 1.0}, abs=1e-15
    )


@pytest.mark.parametrize("method", METHODS)
def test_a_repeated_point_has_empty_balls(method):
    """Fake = real point 1 four times, k = 1 (real radii 1, 1, 2, 4): the fakes' own
    radii are 0, so their open balls hold nothing (recall 0); each copy lies in the ball
    of 1 only (it is exactly 1 from 0 and 2 from 3: boundaries, out): precision 1,
    density 4 / 4; only real 1 has a fake inside its ball: coverage 1/4."""
    m = prdc(on_line(0, 1, 3, 7), on_line(1, 1, 1, 1), k=1, method=method)
    assert m == {"precision": 1.0, "recall": 0.0, "density": 1.0, "coverage": 0.25}


def test_two_samples_of_one_distribution_meet_the_expectations():
    """E[density] = 1 and E[coverage] = 1 - prod_{i<=k} (N - i) / (N + M - i) (Naeem et
    al., Lemmas 1-2). N = M = 3,000 in 2-D: coverage's sd is about 0.004, density's 0.02."""
    g = np.random.default_rng(7)
    real, fake = g.standard_normal((3000, 2)), g.standard_normal((3000, 2))
    m = prdc(real, fake)
    assert expected_coverage(3000, 3000) == pytest.approx(1 - 2.0**-5, abs=2e-4)
    assert m["coverage"] == pytest.approx(expected_coverage(3000, 3000), abs=0.015)
    assert m["density"] == pytest.approx(1.0, abs=0.06)
    assert m["precision"] > 0.95 and m["recall"] > 0.95


def test_tree_and_matrix_routes_agree_and_chunks_change_nothing(monkeypatch):
    g = np.random.default_rng(3)
    for dim in (2, 3):
        real = g.standard_normal((500, dim))
        fake = 1.3 * g.standard_normal((450, dim)) + 0.2
        for k in (1, 4, 5):
            want = prdc(real, fake, k=k, method="brute")
            assert prdc(real, fake, k=k, method="kdtree") == want
    monkeypatch.setattr(prdc_mod, "_CHUNK_ELEMENTS", 1000)  # a few rows per chunk
    monkeypatch.setattr(prdc_mod, "_KD_CHUNK", 3)
    for method in METHODS:
        assert prdc(real, fake, k=5, method=method) == want


def test_reference_cuts_the_fakes_to_its_size_and_reuses_its_radii():
    g = np.random.default_rng(4)
    real, fake = g.standard_normal((600, 2)), g.standard_normal((900, 2))
    ref = PrdcReference(real)
    assert ref(fake) == prdc(real, fake[:600])  # the first 600 of 900
    assert ref(fake[:200]) == prdc(real[:200], fake[:200])  # fewer fakes: as many reals
    few = ref(fake[:5])  # k = 5: no 5th neighbour among 5 samples
    assert set(few) == set(PRDC_METRICS) and all(math.isnan(v) for v in few.values())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x: prdc(x, x[:, :1]), "differ in width"),
        (lambda x: prdc(x, x, k=0), "positive integer"),
        (lambda x: prdc(x[:5], x[:5]), "more than 5"),
        (lambda x: prdc(x, np.full_like(x, np.nan)), "NaN"),
        (lambda x: prdc(x, x, method="exact"), "'auto', 'kdtree' or 'brute'"),
        (lambda x: prdc(x, x, real_radii=torch.ones(3)), "real_radii must have shape"),
        (lambda x: prdc(np.zeros(5), x), "shape (N, D)"),
    ],
)
def test_bad_input_is_a_one_line_error(call, message):
    x = np.random.default_rng(0).standard_normal((20, 2))
    with pytest.raises(McbenchError) as err:
        call(x)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_declarations():
    assert {metric_spec(n).direction for n in PRDC_METRICS} == {"higher"}
    assert metric_spec("density").role == metric_spec("coverage").role == "quality"
    assert metric_spec("precision").role == metric_spec("recall").role == "detail"
    assert metric_spec("coverage").upper == 1.0 and metric_spec("density").upper is None


# -- the 2-D mixtures -------------------------------------------------------------------


def mixture_samples(ds, n: int, seed: int, modes: list[int] | None = None) -> np.ndarray:
    g = np.random.default_rng(seed)
    idx = g.choice(modes, size=n) if modes else g.integers(ds.n_modes, size=n)
    return ds.centers[idx] + ds.std * g.standard_normal((n, 2))


@pytest.mark.parametrize("name", ["ring", "grid-veegan"])
def test_mixture_evaluation_scores_exact_and_collapsed_samples(name):
    """Exact samples: density near 1, coverage near its expectation at N = M = 5,000.
    All samples on one mode of 8 (25): precision stays near 1 while recall and coverage
    fall to about that mode's share of the real samples."""
    ds = get_dataset(name)
    m = ds.evaluate(mixture_samples(ds, 20_000, 0))
    assert set(PRDC_METRICS) <= set(m) and set(m) == set(ds.metrics())
    assert m["coverage"] == pytest.approx(expected_coverage(PRDC_SAMPLES, PRDC_SAMPLES), abs=0.015)
    assert m["density"] == pytest.approx(1.0, abs=0.05) and m["precision"] > 0.95
    one = ds.evaluate(mixture_samples(ds, 20_000, 1, modes=[0]))
    share = 1 / ds.n_modes
    assert one["precision"] > 0.95
    assert one["coverage"] == pytest.approx(share, abs=0.03)
    assert one["recall"] == pytest.approx(share, abs=0.03)


def test_mixture_reference_is_fixed_and_small_evaluations_are_nan():
    ds = get_dataset("ring")
    ref = ds.prdc_reference()
    assert get_dataset("ring").prdc_reference() is ref  # drawn once per mixture
    assert len(ref.real) == PRDC_SAMPLES
    assert get_dataset("ring-veegan").prdc_reference() is not ref  # another std
    x = mixture_samples(ds, 3000, 2)
    assert ds.evaluate(x)["coverage"] == prdc(ref.real[:3000], x)["coverage"]
    assert all(math.isnan(ds.evaluate(x[:4])[k]) for k in PRDC_METRICS)


def test_cli_evaluate_prints_the_new_metrics(tmp_path, capsys):
    """`mcbench evaluate ring FILE` (the command's own entry point, in this process)."""
    from mcbench.cli import main

    ds = get_dataset("ring")
    np.save(tmp_path / "s.npy", mixture_samples(ds, 6000, 3))
    assert main(["evaluate", "ring", str(tmp_path / "s.npy"), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert set(PRDC_METRICS) <= set(m) and 0.9 < m["coverage"] < 1
    assert main(["evaluate", "ring", str(tmp_path / "s.npy")]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert rows["coverage"].endswith("coverage") and "precision (k-NN)" in rows["precision"]
