"""EBGAN does what Zhao et al. (2017) say: the pulling-away term is the mean squared
cosine similarity between distinct codes, and the margin loss stops pushing a sample's
energy up once it exceeds the margin."""

from __future__ import annotations

import pytest
import torch

from mcbench import testing
from mcbench.errors import McbenchError
from mcbench.methods.ebgan import EBGAN, margin_loss, pulling_away
from mcbench.plugin.method import Problem
from mcbench.plugin.protocol import MIXTURE2D


def tiny_problem(data_shape=(2,), batch: int = 16, seed: int = 0) -> Problem:
    return testing.tiny_problem(data_shape, batch=batch, seed=seed)


def make(data_shape=(2,), **overrides) -> EBGAN:
    return EBGAN(tiny_problem(data_shape), EBGAN.make_config({"code_dim": 4, **overrides}))


def test_pulling_away_is_zero_on_orthogonal_codes(float64):
    codes = torch.diag(torch.tensor([1.0, -2.0, 0.5, 3.0]))  # mutually orthogonal rows
    assert float(pulling_away(codes)) == 0
    rotation, _ = torch.linalg.qr(torch.randn(4, 4))  # orthogonal in any basis
    assert float(pulling_away(codes @ rotation)) == pytest.approx(0, abs=1e-12)


def test_pulling_away_is_one_on_parallel_codes(float64):
    v = torch.tensor([0.3, -1.2, 2.0])
    codes = torch.stack([v, 2 * v, -0.5 * v, v])  # parallel, any scale and sign
    assert float(pulling_away(codes)) == pytest.approx(1, abs=1e-12)


def test_pulling_away_on_a_hand_made_set(float64):
    """(1,0), (0,1), (1,1): squared cosines 0, 1/2, 1/2 over the 3 unordered pairs, so
    2 x (0 + 1/2 + 1/2) / (3 x 2) = 1/3; with replicas each set keeps its own value."""
    codes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert float(pulling_away(codes)) == pytest.approx(1 / 3, abs=1e-12)
    parallel = torch.tensor([[1.0, 1.0], [2.0, 2.0], [-1.0, -1.0]])
    torch.testing.assert_close(
        pulling_away(torch.stack([codes, parallel])), torch.tensor([1 / 3, 1.0])
    )
    with pytest.raises(ValueError, match="at least 2 samples"):
        pulling_away(codes[:1])


def test_margin_loss_has_no_gradient_from_fake_energies_above_the_margin(float64):
    real_energy = torch.rand(8, requires_grad=True)
    fake_energy = torch.tensor([0.5, 2.0, 3.0, 0.9, 1.5, 0.1, 4.0, 1.2], requires_grad=True)
    loss = margin_loss(real_energy, fake_energy, 1.0, lambda x: x.mean())
    g_real, g_fake = torch.autograd.grad(loss, [real_energy, fake_energy])
    torch.testing.assert_close(g_real, torch.full((8,), 1 / 8))
    below = fake_energy.detach() < 1.0
    torch.testing.assert_close(g_fake, torch.where(below, -1 / 8, 0.0))


def test_discriminator_ignores_samples_past_the_margin(float64):
    """Through the whole autoencoder: with every generated energy above m, D's gradient
    is the real-energy term's alone; with m above every generated energy, it also
    pushes the generated energies up."""
    method = make()
    real = method.problem.sample_real(16)
    fake = method.G(method.randn(16)).detach()
    params = [*method.enc.parameters(), *method.dec.parameters()]
    real_energy, _ = method.energy(real)
    fake_energy, _ = method.energy(fake)
    low, high = float(fake_energy.detach().min()), float(fake_energy.detach().max())
    assert low > 0

    def grad(loss):
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        return torch.cat([g.flatten() for g in grads])

    real_only = grad(method.mean(real_energy))
    past = grad(margin_loss(real_energy, fake_energy, 0.5 * low, method.mean))
    torch.testing.assert_close(past, real_only, rtol=0, atol=0)
    below = grad(margin_loss(real_energy, fake_energy, 2 * high, method.mean))
    torch.testing.assert_close(below, real_only - grad(method.mean(fake_energy)))


def test_energy_is_the_per_sample_mean_squared_reconstruction_error(float64):
    method = make(data_shape=(1, 2, 2))
    x = torch.randn(5, 1, 2, 2)
    energy, code = method.energy(x)
    assert energy.shape == (5,) and code.shape == (5, 4)
    recon = method.dec(method.enc(x)).reshape(5, 1, 2, 2)
    torch.testing.assert_close(energy, ((recon - x) ** 2).mean((1, 2, 3)))


def test_pulling_away_term_reaches_the_generator(float64):
    """L_G = mean D(G(z)) + lambda_PT f_PT(Enc(G(z))): the step reports f_PT, and with
    lambda_PT = 0 the gradient G stepped on (Adam's first moment after one step is
    (1 - beta1) x gradient) differs: the term is not dead code."""
    moments = []
    for weight in (0.1, 0.0):
        method = make(pt_weight=weight)
        losses = method.step(method.problem.sample_real(16))
        if weight:
            assert 0 < float(losses["pt"]) < 1
        else:  # plain EBGAN neither computes nor reports the term
            assert "pt" not in losses
        state = method.opt_g.state
        moments.append(torch.cat([state[p]["exp_avg"].flatten() for p in method.G.parameters()]))
    assert not torch.allclose(moments[0], moments[1], rtol=1e-3, atol=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"margin": 0}, "margin must be > 0"),
        ({"pt_weight": -0.1}, "pt_weight must be >= 0"),
        ({"code_dim": 0}, "code_dim must be > 0"),
        ({"d_steps": 0}, "d_steps must be > 0"),
    ],
)
def test_bad_config_is_one_clear_error(overrides, message):
    with pytest.raises(McbenchError, match=message):
        EBGAN.make_config(overrides)


def test_a_batch_of_one_is_refused_before_training():
    import dataclasses

    one = dataclasses.replace(MIXTURE2D, batch_size=1)
    with pytest.raises(McbenchError, match="at least 2"):
        EBGAN.check_protocol(EBGAN.make_config({}), one)
    EBGAN.check_protocol(EBGAN.make_config({"pt_weight": 0}), one)  # plain EBGAN: fine
