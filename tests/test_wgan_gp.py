"""WGAN-GP does what Gulrajani et al. (2017, Algorithm 1) say: the penalty is
lambda (||grad D(x^)|| - 1)^2 per sample on random interpolates, zero for a critic of
unit slope, its gradient reaches D's weights exactly (double backprop), and one update
is n_critic critic steps and one generator step."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from mcbench import testing
from mcbench.errors import McbenchError
from mcbench.methods.wgan_gp import WGANGP
from mcbench.plugin.method import Problem


def tiny_problem(data_shape=(2,), seed: int = 0) -> Problem:
    return testing.tiny_problem(data_shape, seed=seed)


def make(data_shape=(2,), **overrides) -> WGANGP:
    return WGANGP(tiny_problem(data_shape), WGANGP.make_config(overrides))


def linear_critic(w: torch.Tensor) -> nn.Module:
    """D(x) = <w, flat x>: its input gradient is w at every x."""
    critic = nn.Linear(w.numel(), 1, bias=False)
    with torch.no_grad():
        critic.weight.copy_(w.reshape(1, -1))
    return nn.Sequential(nn.Flatten(), critic)


@pytest.mark.parametrize("data_shape", [(2,), (1, 2, 2)])
def test_penalty_is_zero_at_unit_slope_and_closed_form_at_slope_two(float64, data_shape):
    method = make(data_shape)
    d = int(torch.tensor(data_shape).prod())
    direction = torch.randn(d)
    direction /= direction.norm()
    real, fake = torch.randn(16, *data_shape), torch.randn(16, *data_shape)
    x_hat = method.interpolate(real, fake)
    assert x_hat.shape == real.shape and x_hat.requires_grad

    method.D = linear_critic(direction)  # ||w|| = 1 everywhere: the penalty vanishes
    assert float(method.gradient_penalty(x_hat).detach()) == pytest.approx(0, abs=1e-12)
    method.D = linear_critic(2 * direction)  # ||w|| = 2: (2 - 1)^2 = 1 at every sample
    assert float(method.gradient_penalty(x_hat).detach()) == pytest.approx(1, abs=1e-12)
    # ...and D's loss carries lambda times it (lambda = 10, Algorithm 1's default)
    assert method.cfg.lam == 10


def test_penalty_takes_each_samples_own_gradient_norm_at_its_interpolate(float64):
    """D(x) = |x|^2 / 2 has gradient x: the penalty is mean_i (|x^_i| - 1)^2 with
    x^_i = eps_i x_i + (1 - eps_i) x~_i, one eps per sample."""
    method = make()
    method.D = lambda x: 0.5 * (x**2).sum(-1, keepdim=True)
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    eps = torch.rand(16, 1)
    x_hat = method.interpolate(real, fake, eps)
    by_hand = eps * real + (1 - eps) * fake
    torch.testing.assert_close(x_hat, by_hand)
    want = ((by_hand.norm(dim=1) - 1) ** 2).mean()
    torch.testing.assert_close(method.gradient_penalty(x_hat), want)
    # eps is per sample: drawn eps differ across samples and lie in [0, 1)
    drawn = method.rand(16, 1)
    assert drawn.unique().numel() == 16 and bool(((drawn >= 0) & (drawn < 1)).all())


def test_penalty_gradient_into_the_critic_matches_finite_differences(float64):
    """The penalty depends on D's weights through D's input gradient; create_graph makes
    its gradient (second derivatives of D) exact."""
    method = make()
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    x_hat = method.interpolate(real, fake)
    params = list(method.D.parameters())
    # the last layer's bias does not move D's input gradient: its entry is 0 (unused)
    grads = torch.autograd.grad(method.gradient_penalty(x_hat), params, materialize_grads=True)
    exact = parameters_to_vector(grads)
    assert exact.abs().max() > 1e-3  # a real test: the penalty is not flat here

    fd = testing.finite_differences(lambda: method.gradient_penalty(x_hat), params)
    torch.testing.assert_close(exact, fd, rtol=1e-6, atol=1e-9)


def test_one_update_is_n_critic_critic_steps_and_one_generator_step():
    method = make(n_critic=5)
    losses = method.step(method.problem.sample_real(16))
    assert set(losses) == {"d", "g", "wasserstein", "penalty"}
    d_param, g_param = next(method.D.parameters()), next(method.G.parameters())
    assert int(method.opt_d.state[d_param]["step"]) == 5
    assert int(method.opt_g.state[g_param]["step"]) == 1
    # the critic's loss is -W + lambda * penalty
    torch.testing.assert_close(losses["d"], -losses["wasserstein"] + 10 * losses["penalty"])


@pytest.mark.parametrize(
    "preset, lr_d, lr_g, betas",
    [
        (None, 1e-3, 1e-3, (0.5, 0.999)),  # the protocol's (tiny_problem's) Adam
        ("paper", 1e-4, 1e-4, (0.0, 0.9)),  # Algorithm 1
        ("authors-code", 1e-4, 1e-4, (0.5, 0.9)),  # gan_toy.py
    ],
)
def test_optimiser_is_the_protocols_unless_a_preset_asks(preset, lr_d, lr_g, betas):
    method = WGANGP(tiny_problem(), WGANGP.make_config({"preset": preset} if preset else {}))
    for opt, lr in ((method.opt_d, lr_d), (method.opt_g, lr_g)):
        group = opt.param_groups[0]
        assert group["lr"] == lr and tuple(group["betas"]) == betas
    assert method.cfg.lam == (0.1 if preset == "authors-code" else 10.0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lam": -1}, "lam must be >= 0"),
        ({"n_critic": 0}, "n_critic must be > 0"),
        ({"adam": "sgd"}, "adam must be one of protocol, paper, authors-code"),
    ],
)
def test_bad_config_is_one_clear_error(overrides, message):
    with pytest.raises(McbenchError, match=message):
        WGANGP.make_config(overrides)
