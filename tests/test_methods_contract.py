"""Every registered method honours the Method contract on the real protocol (CPU).

A few steps on `ring`: each loss is a finite, detached scalar, samples have the data's
shape, and the same seed gives the same numbers (another seed, others).
"""

from __future__ import annotations

import pytest
import torch

from mcbench.plugin.registry import methods
from mcbench.run.runner import RunSpec, build

STEPS = 2


def run_steps(name: str, seed: int = 0):
    method, ds, data_rng = build(
        RunSpec(name, "ring", seed, STEPS, STEPS, 100), torch.device("cpu")
    )
    history = []
    for _ in range(STEPS):
        history.append(method.step(ds.sample(method.problem.batch_size, data_rng, "cpu")))
    samples = method.sample(11, torch.Generator().manual_seed(5))
    return history, samples, ds


@pytest.mark.parametrize("name", sorted(methods()))
def test_method_contract(name):
    history, samples, ds = run_steps(name)
    for losses in history:
        assert losses, f"{name} returned no losses"
        for key, value in losses.items():
            assert isinstance(value, torch.Tensor) and value.dim() == 0, key
            assert not value.requires_grad, f"{name}: loss {key} is not detached"
            assert torch.isfinite(value), f"{name}: loss {key} is {value}"
    assert samples.shape == (11, *ds.shape)
    assert torch.isfinite(samples).all()

    again, samples2, _ = run_steps(name)
    assert [{k: float(v) for k, v in h.items()} for h in history] == [
        {k: float(v) for k, v in h.items()} for h in again
    ]
    assert torch.equal(samples, samples2)
    _, other, _ = run_steps(name, seed=1)
    assert not torch.equal(samples, other), f"{name}: the seed changes nothing"
