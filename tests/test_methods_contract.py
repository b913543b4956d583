"""Every registered method keeps the Method contract (mcbench.testing.check_method).

One case per distinct method (a name and the alias that configures it the same way are
one), on `ring` with a few updates: finite detached losses, sample shape, the same seed
giving the same numbers, no draw from the global RNG, a bit-for-bit checkpoint round
trip, and, for classes that declare themselves vectorised, replicas equal to sequential
runs. A new method file is checked without any edit here.
"""

from __future__ import annotations

import pytest

from mcbench.plugin.registry import distinct_methods
from mcbench.testing import CHECKS, check_method, is_vectorized

STEPS = 3  # LBT's updates are the slow ones (~0.1-0.2 s each on one core)
REPLICAS = 2


@pytest.mark.parametrize("name", distinct_methods())
def test_method_keeps_the_contract(name):
    report = check_method(name, steps=STEPS, replicas=REPLICAS, eval_samples=64)
    expected = [k for k in CHECKS if k != "replicas" or is_vectorized(report.cls)]
    assert list(report.checks) == expected, str(report)
