import math

import numpy as np
import pytest
import torch

from mcbench.datasets import DATASETS, get_dataset
from mcbench.errors import McbenchError


def test_ring_layout_has_eight_distinct_modes_on_the_unit_circle():
    ds = get_dataset("ring")
    assert ds.n_modes == 8 and ds.std == 0.1
    np.testing.assert_allclose(np.linalg.norm(ds.centers, axis=1), 1.0)
    # angle 2*pi*k/8, x = sin, y = cos: mode 0 at (0, 1), mode 2 at (1, 0)
    np.testing.assert_allclose(ds.centers[0], [0, 1], atol=1e-12)
    np.testing.assert_allclose(ds.centers[2], [1, 0], atol=1e-12)
    d = np.linalg.norm(ds.centers[:, None] - ds.centers[None], axis=-1)
    assert d[~np.eye(8, dtype=bool)].min() == pytest.approx(2 * math.sin(math.pi / 8))


def test_grid_layouts():
    g = get_dataset("grid")
    assert g.n_modes == 100 and g.std == 0.01
    assert sorted(set(np.round(g.centers[:, 0], 9))) == pytest.approx(
        [-0.9 + 0.2 * i for i in range(10)]
    )
    v = get_dataset("grid-veegan")
    assert v.n_modes == 25 and v.std == 0.05
    assert set(v.centers.ravel()) == {-4.0, -2.0, 0.0, 2.0, 4.0}
    assert get_dataset("ring-veegan").std == 0.01


@pytest.mark.parametrize(
    "name", sorted(n for n in DATASETS if get_dataset(n).family == "mixture2d")
)
def test_sampling_is_seeded_and_matches_the_mixture(name):
    ds = get_dataset(name)
    a = ds.sample(20_000, torch.Generator().manual_seed(5), torch.device("cpu"))
    b = ds.sample(20_000, torch.Generator().manual_seed(5), torch.device("cpu"))
    assert torch.equal(a, b) and a.shape == (20_000, 2)
    m = ds.evaluate(a)
    assert m["modes_covered"] == ds.n_modes
    assert m["high_quality_pct"] == pytest.approx(100 * (1 - math.exp(-4.5)), abs=0.5)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(McbenchError, match=r"choices: .*ring"):
        get_dataset("rings")
