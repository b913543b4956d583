"""LBT, LBT-GAN and LBT-implicit: hypergradients against finite differences and closed
forms, the VAE's ELBO against closed forms, finite losses, shapes and determinism.
Tiny nets in float64 on the CPU; each test takes a fraction of a second to a few seconds."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

import mcbench.methods.lbt as lbt_mod
from mcbench.errors import McbenchError
from mcbench.methods.blocks.nets import MLPFamily
from mcbench.methods.blocks.unroll import AdamState, bind, unroll
from mcbench.methods.blocks.vae import VAE
from mcbench.methods.lbt import LBT
from mcbench.methods.lbt_gan import LBTGAN
from mcbench.methods.lbt_implicit import LBTImplicit, implicit_hypergradient
from mcbench.plugin.method import Problem

METHODS = [LBT, LBTGAN, LBTImplicit]


def tiny_problem(seed: int = 0, shape=(2,), family: str = "mixture2d") -> Problem:
    """Nets of a few units, a 3-d generator latent and a Gaussian 'real' stream."""
    torch.manual_seed(seed)
    fam = MLPFamily(shape, (6,), "tanh")
    rng = torch.Generator().manual_seed(seed)
    data_rng = torch.Generator().manual_seed(seed + 1000)

    def sample_real(n: int) -> torch.Tensor:
        return 0.5 * torch.randn(n, *shape, generator=data_rng) + 0.3

    return Problem(
        data_shape=shape,
        latent_dim=3,
        device=torch.device("cpu"),
        rng=rng,
        lr_g=1e-3,
        lr_d=1e-2,
        betas=(0.5, 0.999),
        batch_size=8,
        generator=fam.generator,
        critic=fam.critic,
        encoder=fam.encoder,
        mlp=fam.mlp,
        estimator_hidden=(5,),
        sample_real=sample_real,
        family=family,
    )


def build(cls, seed: int = 0, shape=(2,), family: str = "mixture2d", **overrides):
    cfg = cls.make_config({"vae_latent": 2, "decoder_var": 0.1, "M": 2, **overrides})
    return cls(tiny_problem(seed, shape, family), cfg)


# -- the VAE ----------------------------------------------------------------------------


def test_vae_elbo_matches_closed_form(float64):
    """Zero weights make the encoder output (m, l) and the decoder a constant c, so the
    ELBO is log N(x; c, var I) - KL(N(m, e^l) || N(0, 1)) exactly."""
    vae = VAE(tiny_problem(), latent_dim=2, decoder_var=0.3)
    m, lv, c = torch.tensor([0.4, -1.0]), torch.tensor([-0.5, 0.2]), torch.tensor([0.1, 0.7])
    with torch.no_grad():
        for net in (vae.encoder, vae.decoder):
            for p in net.parameters():
                p.zero_()
        vae.encoder[-1].bias.copy_(torch.cat([m, lv]))
        vae.decoder[-1].bias.copy_(c)
    x = torch.randn(5, 2)
    elbo = vae(x, torch.randn(5, 2))
    normal = torch.distributions.Normal
    log_px = normal(c, math.sqrt(0.3)).log_prob(x).sum(1)
    kl = torch.distributions.kl_divergence(normal(m, (0.5 * lv).exp()), normal(0.0, 1.0)).sum()
    torch.testing.assert_close(elbo, log_px - kl)


def test_vae_flattens_images_and_learns_variance(float64):
    vae = VAE(tiny_problem(shape=(1, 3, 3)), latent_dim=2, decoder_var=0.1, learn_var=True)
    out = vae(torch.randn(4, 1, 3, 3), torch.randn(4, 2))
    assert out.shape == (4,) and torch.isfinite(out).all()
    assert vae.decoder[-1].out_features == 2 * 9


# -- hypergradients --------------------------------------------------------------------


@pytest.mark.parametrize("K", [1, 2])
def test_unrolled_hypergradient_matches_finite_differences(K, float64, monkeypatch):
    """d/d theta of -ELBO(real; phi_K(theta)) through K Adam steps on G's samples.

    The harness detaches Adam's second moment (authors' choice); the test differentiates
    it too, so autograd must equal the derivative of the computed function exactly."""
    exact = functools.partial(unroll, differentiate_second_moment=True)
    monkeypatch.setattr(lbt_mod, "unroll", exact)
    m = build(LBT, K=K, clip_norm=0.0)
    for _ in range(3):  # non-trivial estimator and Adam moments
        m.step(m.problem.sample_real(8))
    real = m.problem.sample_real(8)
    state = m.problem.rng.get_state()
    params = list(m.G.parameters())

    def loss() -> torch.Tensor:
        m.problem.rng.set_state(state)  # the same generator and VAE noise every call
        return m.generator_loss(real)[0]

    grads = torch.autograd.grad(loss(), params)
    direction = [torch.randn_like(p) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction, strict=True))
    h = 1e-6
    values = []
    for sign in (1, -2, 1):  # +h, -h, back to 0
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.add_(sign * h * d)
        values.append(loss().detach())
    numeric = (values[0] - values[1]) / (2 * h)
    assert abs(float(analytic)) > 1e-4  # the check is not vacuous
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-9)


class Gaussian(nn.Module):
    """A diagonal Gaussian density estimator: its MLE (mean, variance) is closed-form."""

    def __init__(self) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(2))
        self.log_sigma = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mu) / self.log_sigma.exp()
        return (-0.5 * z**2 - self.log_sigma - 0.5 * math.log(2 * math.pi)).sum(1)


def gaussian_problem():
    g = torch.Generator().manual_seed(0)
    fake = torch.randn(64, 2, generator=g) * torch.tensor([1.0, 0.5]) + torch.tensor([0.3, -0.2])
    real = 0.8 * torch.randn(64, 2, generator=g)
    return fake.requires_grad_(True), real


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.parametrize("solver", ["cg", "neumann"])
def test_implicit_hypergradient_matches_closed_form(solver, float64):
    """At the estimator's optimum, the implicit route gives d outer(phi*(x)) / dx exactly."""
    fake, real = gaussian_problem()

    def outer_at_optimum(x: torch.Tensor) -> torch.Tensor:
        mu, var = x.mean(0), x.var(0, unbiased=False)
        return -torch.distributions.Normal(mu, var.sqrt()).log_prob(real).sum(1).mean()

    exact = torch.autograd.grad(outer_at_optimum(fake), fake)[0]
    est = Gaussian()
    with torch.no_grad():
        est.mu.copy_(fake.mean(0))
        est.log_sigma.copy_(0.5 * fake.var(0, unbiased=False).log())
    iterations, step = (10, None) if solver == "cg" else (400, 0.2)
    got = implicit_hypergradient(
        -est(fake).mean(),
        -est(real).mean(),
        list(est.parameters()),
        [fake],
        solver,
        iterations,
        damping=0.0,
        neumann_step=step or 1e-3,
    )[0]
    torch.testing.assert_close(got, exact, rtol=1e-6, atol=1e-9)


def test_implicit_agrees_with_long_adam_unroll(float64):
    """K = 200 Adam steps from a cold estimator (the harness's own unroll) point the same
    way as the implicit hypergradient: cosine > 0.99 (measured 0.99999 at K = 200)."""
    fake, real = gaussian_problem()
    est = Gaussian()
    zeros = {k: torch.zeros_like(p) for k, p in est.named_parameters()}
    state = AdamState(0, zeros, dict(zeros), 0.05, (0.5, 0.999), 1e-8)
    params = unroll(est, lambda f: -f(fake).mean(), state, 200)
    unrolled = torch.autograd.grad(-bind(est, params)(real).mean(), fake)[0]
    with torch.no_grad():  # the implicit route needs the optimum itself
        for k, p in est.named_parameters():
            p.copy_(params[k])
    implicit = implicit_hypergradient(
        -est(fake).mean(), -est(real).mean(), list(est.parameters()), [fake], "cg", 10, 0.0
    )[0]
    assert cosine(unrolled, implicit) > 0.99
    # and a single step does not: the agreement comes from depth
    params1 = unroll(Gaussian(), lambda f: -f(fake).mean(), state, 1)
    one = torch.autograd.grad(-bind(Gaussian(), params1)(real).mean(), fake)[0]
    assert cosine(one, implicit) < 0.9


# -- the methods -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", METHODS)
def test_steps_give_finite_losses_samples_and_curves(cls, float64):
    m = build(cls)
    for _ in range(2):
        losses = m.step(m.problem.sample_real(8))
    assert losses and all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert not any(v.requires_grad for v in losses.values())
    assert m.sample(7).shape == (7, 2)
    curves = m.diagnostics()
    assert set(curves) == {"elbo_generated", "elbo_real"}
    assert all(math.isfinite(v) for v in curves.values())


@pytest.mark.parametrize("cls", METHODS)
def test_same_seed_same_numbers(cls, float64):
    runs = []
    for _ in range(2):
        m = build(cls, seed=3)
        out = [m.step(m.problem.sample_real(8)) for _ in range(2)]
        runs.append((out, [p.detach().clone() for p in m.G.parameters()]))
    (out_a, g_a), (out_b, g_b) = runs
    assert all(torch.equal(a[k], b[k]) for a, b in zip(out_a, out_b, strict=True) for k in a)
    assert all(torch.equal(a, b) for a, b in zip(g_a, g_b, strict=True))


def test_diagnostics_leave_the_training_streams_alone(float64):
    """Evaluating the ELBO curves must not change what training does next."""
    params = []
    for with_diag in (False, True):
        m = build(LBT, seed=5)
        m.step(m.problem.sample_real(8))
        if with_diag:
            m.diagnostics()
        m.step(m.problem.sample_real(8))
        params.append(torch.cat([p.detach().flatten() for p in m.G.parameters()]))
    assert torch.equal(params[0], params[1])


def test_lbt_gan_weight_depends_on_data_and_images_work(float64):
    assert build(LBTGAN).lambda_gan == 0.1
    m = build(LBTGAN, shape=(1, 3, 3), family="images")
    assert m.lambda_gan == 1.0
    assert build(LBTGAN, lambda_gan="0.5").lambda_gan == 0.5
    losses = m.step(m.problem.sample_real(8))
    assert all(torch.isfinite(v) for v in losses.values())
    assert m.sample(2).shape == (2, 1, 3, 3)


def test_presets_and_validation():
    paper = LBT.make_config({"preset": "paper"})
    assert (paper.K, paper.M, paper.adam_defaults, paper.clip_norm) == (5, 15, True, 0.0)
    code = LBT.make_config({"preset": "authors-code"})
    assert (code.decoder_var, code.est_lr_mult, code.clip_norm) == (1e-3, 3.0, 5.0)
    assert LBT.make_config({"preset": "paper", "K": "2"}).K == 2
    for bad in ({"K": 0}, {"decoder_var": 0}, {"clip_norm": -1}):
        with pytest.raises(McbenchError):
            LBT.make_config(bad)
    for bad in ({"solver": "newton"}, {"damping": -1.0}, {"iterations": 0}):
        with pytest.raises(McbenchError):
            LBTImplicit.make_config(bad)
    with pytest.raises(McbenchError):
        LBTGAN.make_config({"lambda_gan": "much"})


def test_depth_study_fits_the_cost_per_unrolled_step():
    """The study's line fit recovers cost = a + b K exactly on exact data, and leaves
    out a method measured at one depth only (lbt-implicit)."""
    import pandas as pd

    from mcbench.depth_study import fit_lines

    ks = [1, 2, 5, 10, 20]
    rows = [
        {"method": "m", "K": k, "wall_ms": 3 + 2 * k, "cpu_ms": 1 + 0.5 * k, "peak_mem_mb": 7 * k}
        for k in ks
    ]
    rows.append({"method": "lbt-implicit", "K": 0, "wall_ms": 9, "cpu_ms": 9, "peak_mem_mb": 1})
    fit = fit_lines(pd.DataFrame(rows)).set_index("method")
    assert list(fit.index) == ["m"]
    assert fit.loc["m", "wall_ms_per_step"] == pytest.approx(2)
    assert fit.loc["m", "wall_ms_base"] == pytest.approx(3)
    assert fit.loc["m", "cpu_ms_per_step"] == pytest.approx(0.5)
    assert fit.loc["m", "peak_mem_mb_per_step"] == pytest.approx(7)
    assert fit.loc["m", "wall_ms_r2"] == pytest.approx(1)
