"""Mode-regularized GAN and MDGAN (Che et al., ICLR 2017) do what the paper says: tiny CPU
problems in float64, so gradients can be checked against finite differences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector

from mcbench import testing
from mcbench.errors import McbenchError
from mcbench.methods.blocks.losses import d_loss, g_loss_nonsaturating
from mcbench.methods.gan import GAN
from mcbench.methods.mrgan import MDGAN, MRGAN
from mcbench.plugin.registry import resolve


def tiny_problem(latent=3, hidden=(6,), batch=16, seed=0):
    """Small enough for finite differences over every weight of G and E."""
    return testing.tiny_problem((2,), latent, hidden, batch, seed, lr_g=1e-2, lr_d=1e-2)


def make(cls, problem, **overrides):
    return cls(problem, cls.make_config(overrides))


def grad(loss, params):
    return parameters_to_vector(torch.autograd.grad(loss, params, allow_unused=False))


# -- the regularized GAN -----------------------------------------------------------------


def test_with_zero_lambdas_the_generator_gradient_is_the_gans(float64):
    """lambda_1 = lambda_2 = 0 leaves eq. 1's GAN term only: on the same draws G's gradient
    is methods/gan.py's -log D(G(z)) gradient, and E gets none; with lambda_1 > 0 it
    differs."""
    p = tiny_problem()
    method = make(MRGAN, p, lambda_1=0.0, lambda_2=0.0)
    real, z = p.sample_real(16), p.noise(16)
    params = [*method.G.parameters(), *method.E.parameters()]
    g_params = list(method.G.parameters())
    loss, _ = method.generator_loss(real, z)
    got = torch.autograd.grad(loss, params, allow_unused=True)
    want = grad(g_loss_nonsaturating(method.D(method.G(z))), g_params)
    torch.testing.assert_close(parameters_to_vector(got[: len(g_params)]), want, rtol=0, atol=0)
    assert all(g is None or not g.any() for g in got[len(g_params) :])
    method.cfg.lambda_1 = 0.2
    loss, _ = method.generator_loss(real, z)
    assert not torch.allclose(grad(loss, g_params), want, rtol=1e-3)


def test_with_zero_lambdas_training_is_the_gans(float64):
    """The whole update, too: same seeds, same draws, so G and D end bit for bit where the
    GAN's end (MR-GAN builds G and D in the GAN's order, E after them)."""
    gan, mrgan = make(GAN, tiny_problem()), make(MRGAN, tiny_problem(), lambda_1=0, lambda_2=0)
    for _ in range(3):
        a = gan.step(gan.problem.sample_real(16))
        b = mrgan.step(mrgan.problem.sample_real(16))
        assert torch.equal(a["d"], b["d"]) and torch.equal(a["g"], b["gan"])
    for net in ("D", "G"):
        want = parameters_to_vector(getattr(gan, net).parameters())
        assert torch.equal(parameters_to_vector(getattr(mrgan, net).parameters()), want)
    regularised = make(MRGAN, tiny_problem())  # the default lambdas
    for _ in range(3):
        regularised.step(regularised.problem.sample_real(16))
    assert not torch.equal(parameters_to_vector(regularised.G.parameters()), want)


def test_geometric_gradient_matches_finite_differences(float64):
    """d(x, G(E(x))) = mean ||x - G(E(x))||^2, differentiated in every weight of G and E."""
    p = tiny_problem()
    method = make(MRGAN, p)
    real = p.sample_real(16)
    params = [*method.G.parameters(), *method.E.parameters()]
    exact = grad(method.geometric(real), params)
    fd = testing.finite_differences(lambda: method.geometric(real), params)
    torch.testing.assert_close(exact, fd, rtol=1e-6, atol=1e-9)
    assert exact.abs().max() > 1e-3  # not a vacuous comparison


def test_encoder_descends_eq_2(float64):
    """E's gradient of L_GE is that of the paper's T_E = lambda_1 d - lambda_2 log D(G(E(x))),
    written here from scratch and differentiated by finite differences."""
    p = tiny_problem()
    method = make(MRGAN, p, lambda_1=0.3, lambda_2=0.7)
    real, z = p.sample_real(16), p.noise(16)
    e_params = list(method.E.parameters())

    def t_e():
        recon = method.G(method.E(real))
        dist = (real - recon).pow(2).sum(-1).mean()
        log_d = F.logsigmoid(method.D(recon)).mean()
        return 0.3 * dist - 0.7 * log_d

    exact = grad(method.generator_loss(real, z)[0], e_params)
    torch.testing.assert_close(
        exact, testing.finite_differences(t_e, e_params), rtol=1e-6, atol=1e-9
    )


def test_geometric_term_vanishes_where_g_inverts_e(float64):
    """E linear and invertible, G its inverse: G(E(x)) = x on every batch, so d is 0; G
    shifted by c makes d = ||c||^2 exactly."""
    p = tiny_problem(latent=2)
    method = make(MRGAN, p)
    a = torch.tensor([[2.0, 1.0], [0.5, -1.5]])
    method.E, method.G = nn.Linear(2, 2, bias=False), nn.Linear(2, 2)
    with torch.no_grad():
        method.E.weight.copy_(a)
        method.G.weight.copy_(torch.linalg.inv(a))
        method.G.bias.zero_()
    real = p.sample_real(64)
    assert float(method.geometric(real).detach()) < 1e-25
    shift = torch.tensor([0.3, -0.4])
    with torch.no_grad():
        method.G.bias.copy_(shift)
    torch.testing.assert_close(method.geometric(real), shift.pow(2).sum())


def test_mode_regulariser_pulls_reconstructions_towards_real(float64):
    """The sign convention: descending lambda_2 * (-log D(G(E(x)))) moves G(E(x)) where D
    says "real" (its logit rises); the printed eq. 1 sign would lower it."""
    p = tiny_problem()
    method = make(MRGAN, p, lambda_1=0.0, lambda_2=1.0)
    real, z = p.sample_real(16), p.noise(16)
    before = method.D(method.G(method.E(real))).mean()
    _, parts = method.generator_loss(real, z)
    torch.testing.assert_close(
        parts["mode"], -F.logsigmoid(method.D(method.G(method.E(real)))).mean()
    )
    opt = torch.optim.SGD([*method.G.parameters(), *method.E.parameters()], lr=0.05)
    opt.zero_grad()
    parts["mode"].backward()
    opt.step()
    assert method.D(method.G(method.E(real))).mean() > before + 1e-4


def test_step_returns_the_parts_of_its_loss(float64):
    p = tiny_problem()
    method = make(MRGAN, p, lambda_1=0.3, lambda_2=0.5)
    out = method.step(p.sample_real(16))
    torch.testing.assert_close(out["g"], out["gan"] + 0.3 * out["geometric"] + 0.5 * out["mode"])
    assert all(not v.requires_grad for v in out.values())


@pytest.mark.parametrize(
    "selector, message",
    [
        ("mrgan[lambda_1=-1]", "lambda_1 must be >= 0"),
        ("mrgan[lambda_2=-0.1]", "lambda_2 must be >= 0"),
        ("mrgan[d_steps=0]", "d_steps must be > 0"),
        ("mdgan[lambda_1=-1]", "lambda_1 must be >= 0"),
        ("mdgan[lamda_2=1]", "no hyperparameter 'lamda_2'"),
    ],
)
def test_bad_hyperparameters_are_refused(selector, message):
    with pytest.raises(McbenchError, match=message):
        resolve(selector)


def test_mrgan_and_mdgan_are_two_methods():
    assert resolve("mrgan")[0].cls is MRGAN
    assert resolve("mdgan")[0].cls is MDGAN


# -- MDGAN -------------------------------------------------------------------------------


def spy(net, seen):
    net.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))


def test_mdgan_discriminators_see_what_section_3_3_says(float64):
    """D1: x real, G(E(x)) fake (the G, E before the manifold update); D2: G(E(x)) real with
    the G, E the manifold update left, G(z) fake; then G's own step judged by D2."""
    p = tiny_problem()
    method = make(MDGAN, p)
    seen1, seen2, recon_at_d2 = [], [], []
    spy(method.D1, seen1)
    spy(method.D2, seen2)
    real = p.sample_real(16)
    with torch.no_grad():
        recon_before = method.reconstruct(real)

    def note(_, args):  # what G(E(x)) is when D2 is first called
        if not recon_at_d2:
            with torch.no_grad():
                recon_at_d2.append(method.reconstruct(real))

    method.D2.register_forward_pre_hook(note)
    method.step(real)
    assert torch.equal(seen1[0], real)
    torch.testing.assert_close(seen1[1], recon_before, rtol=0, atol=0)
    torch.testing.assert_close(seen1[2], recon_before, rtol=0, atol=0)  # step 2: D1(G(E(x)))
    assert len(seen2) == 3  # D2(G(E(x))), D2(G(z)) for D2's update, D2(G(z)) for G's
    torch.testing.assert_close(seen2[0], recon_at_d2[0], rtol=0, atol=0)
    assert not torch.allclose(recon_at_d2[0], recon_before)  # the manifold step moved it
    assert torch.cdist(seen2[1], recon_at_d2[0]).min() > 0  # the fakes are G(z), not G(E(x))


def test_mdgan_diffusion_discriminator_labels_reconstructions_real(float64):
    p = tiny_problem()
    method = make(MDGAN, p)
    real, z = p.sample_real(16), p.noise(16)
    with torch.no_grad():
        want = d_loss(method.D2(method.G(method.E(real))), method.D2(method.G(z)))
    torch.testing.assert_close(method.diffusion_d_loss(real, z), want)


def test_mdgan_manifold_gradient_matches_finite_differences(float64):
    """Step 2's loss lambda_1 d - lambda_2 log D1(G(E(x))) in the weights of G and E."""
    p = tiny_problem()
    method = make(MDGAN, p, lambda_1=0.5, lambda_2=0.3)
    real = p.sample_real(16)
    params = [*method.G.parameters(), *method.E.parameters()]

    def loss():
        recon = method.G(method.E(real))
        return (
            0.5 * (real - recon).pow(2).sum(-1).mean() - 0.3 * F.logsigmoid(method.D1(recon)).mean()
        )

    exact = grad(method.manifold_loss(real)[0], params)
    torch.testing.assert_close(
        exact, testing.finite_differences(loss, params), rtol=1e-6, atol=1e-9
    )


def test_mdgan_diffusion_step_leaves_the_encoder_alone(float64):
    """Steps 3-4 update D2 and G only: E ends the update where the manifold step left it
    (an optimiser step on E with no gradient would still move it by Adam's momentum)."""
    p = tiny_problem()
    method = make(MDGAN, p)
    method.step(p.sample_real(16))  # E's optimiser now carries momentum
    e_at_diffusion, g_at_diffusion = [], []

    def note(_, args):
        if not e_at_diffusion:
            e_at_diffusion.append(parameters_to_vector(method.E.parameters()).detach().clone())
            g_at_diffusion.append(parameters_to_vector(method.G.parameters()).detach().clone())

    method.D2.register_forward_pre_hook(note)
    method.step(p.sample_real(16))
    assert torch.equal(parameters_to_vector(method.E.parameters()), e_at_diffusion[0])
    assert not torch.equal(parameters_to_vector(method.G.parameters()), g_at_diffusion[0])
