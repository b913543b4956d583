"""Shared by tests/ and the pytest-benchmark files in benchmarks/."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests run single-threaded: deterministic and kind to a 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def float64():
    """float64 by default for the test: finite differences and exact comparisons."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
