"""The compiled-LBT experiment times the harness's own update: its pure function, run
eagerly, takes the same update as `LBT.step` from the same weights and noise."""

from __future__ import annotations

import compiled_lbt
import pytest
import torch

from mcbench.run.runner import RunSpec, build


def test_functional_update_is_the_harness_update(float64):
    """In float64, so that Adam's normalisation of near-zero gradients cannot magnify the
    rounding of two orderings of the same arithmetic into a visible difference."""
    m, ds, data_rng = build(RunSpec(compiled_lbt.SELECTOR, "ring", 0, 1, 1, 1), torch.device("cpu"))
    state = compiled_lbt.initial_state(m)
    update = compiled_lbt.functional_update(m)
    for _ in range(2):
        real = ds.sample(m.problem.batch_size, data_rng, torch.device("cpu"))
        replay = torch.Generator().manual_seed(0)
        replay.set_state(m.problem.rng.get_state())  # the noise the harness will draw
        noise = compiled_lbt.draw_noise(m, replay)
        m.step(real)
        state = list(update(*state, real, *noise))
    for name, p in m.G.named_parameters():
        torch.testing.assert_close(state[0][name], p.detach(), rtol=1e-9, atol=1e-12)
    for name, p in m.E.named_parameters():
        torch.testing.assert_close(state[1][name], p.detach(), rtol=1e-9, atol=1e-12)
    assert int(state[4]) == int(m.opt_e.state[next(m.E.parameters())]["step"])


def test_refuses_what_it_was_not_written_for():
    m, _, _ = build(RunSpec("lbt", "ring", 0, 1, 1, 1), torch.device("cpu"))  # eps outside
    with pytest.raises(ValueError, match="eps inside"):
        compiled_lbt.functional_update(m)
