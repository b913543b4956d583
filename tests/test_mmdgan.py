"""MMD GAN (Li et al., NIPS 2017): the MMD^2 estimators against closed forms, and the
critic and generator updates against what Algorithm 1 says they do."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector

from mcbench import testing
from mcbench.errors import McbenchError
from mcbench.methods.blocks.kernels import _doublings, mix_rbf_kernel, mmd2
from mcbench.methods.mmdgan import MMDGAN
from mcbench.plugin.registry import resolve

SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0)


def expected_kernel(d: int, var: float, gap2: float) -> float:
    """E sum_q exp(-||W||^2 / (2 sigma_q^2)) for W ~ N(m, var I_d), ||m||^2 = gap2: a Gaussian
    integral, (sigma^2 / (sigma^2 + var))^(d/2) exp(-gap2 / (2 (sigma^2 + var))) per sigma."""
    return sum(
        (s * s / (s * s + var)) ** (d / 2) * math.exp(-gap2 / (2 * (s * s + var))) for s in SIGMAS
    )


def two_gaussians(n, mu2, s1, s2, g):
    x = s1 * torch.randn(n, len(mu2), generator=g)
    y = torch.tensor(mu2) + s2 * torch.randn(n, len(mu2), generator=g)
    return x, y


def monte_carlo(draws, estimator, n, mu2, s1, s2, seed=0):
    """Mean and standard error of the estimator over independent pairs of samples."""
    g = torch.Generator().manual_seed(seed)
    values = torch.stack(
        [mmd2(*two_gaussians(n, mu2, s1, s2, g), SIGMAS, estimator) for _ in range(draws)]
    )
    return float(values.mean()), float(values.std() / math.sqrt(draws))


def test_mmd2_matches_the_closed_form_for_two_gaussians(float64):
    """X ~ N(0, s1^2 I), Y ~ N(mu, s2^2 I) in 2-D: MMD^2 = E k(x,x') + E k(y,y') - 2 E k(x,y)
    in closed form. The unbiased estimator's mean over 24 independent draws of 256 + 256
    samples lies within 4 standard errors of it (a 4-sigma Monte Carlo tolerance, which
    itself is under 5% of the value); the biased one's lies within 4 standard errors of
    MMD^2 + (K(0) - E k(x,x')) / n + (K(0) - E k(y,y')) / n, K(0) = 5 kernels (its bias,
    too small to see here: the next test shows it)."""
    mu2, s1, s2, n = [1.5, 0.0], 0.5, 1.0, 256
    exx = expected_kernel(2, 2 * s1**2, 0.0)
    eyy = expected_kernel(2, 2 * s2**2, 0.0)
    exy = expected_kernel(2, s1**2 + s2**2, sum(m * m for m in mu2))
    truth = exx + eyy - 2 * exy
    mean, se = monte_carlo(24, "unbiased", n, mu2, s1, s2)
    assert abs(mean - truth) < 4 * se < 0.05 * truth
    biased_truth = truth + (len(SIGMAS) - exx) / n + (len(SIGMAS) - eyy) / n
    mean_b, se_b = monte_carlo(24, "biased", n, mu2, s1, s2)
    assert abs(mean_b - biased_truth) < 4 * se_b


def test_biased_mmd2_of_a_set_against_itself_is_zero():
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(0))
    assert float(mmd2(x, x, SIGMAS, "biased")) == 0.0
    assert float(mmd2(x, x.clone() + 0.1, SIGMAS, "biased")) > 0.0


def test_unbiased_mmd2_is_zero_in_expectation_for_one_distribution(float64):
    """Two independent samples of N(0, I): the unbiased estimate averages to 0 within 4
    standard errors over 40 draws; the biased one, over the same draws, does not."""
    mean, se = monte_carlo(40, "unbiased", 128, [0.0, 0.0], 1.0, 1.0, seed=1)
    assert abs(mean) < 4 * se
    mean_b, se_b = monte_carlo(40, "biased", 128, [0.0, 0.0], 1.0, 1.0, seed=1)
    assert mean_b > 4 * se_b


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_mmd2_keeps_its_precision_in_float32(estimator):
    """A clipped critic's features sit close together, often off the origin: MMD^2 is then
    a small difference of kernel means near 5. In float32 it still agrees with float64 to
    1e-4 (kernel minus its constant by expm1; distances after removing the offset;
    the plain exp and expansion are off by about 2e-3 here)."""
    g = torch.Generator().manual_seed(5)
    x = 10.0 + 1e-2 * torch.randn(256, 8, generator=g, dtype=torch.float64)
    y = 10.0 + 1e-2 * torch.randn(256, 8, generator=g, dtype=torch.float64) + 5e-3
    exact = mmd2(x, y, SIGMAS, estimator)
    assert 1e-5 < float(exact) < 1e-3  # small against the kernel means of about 5
    torch.testing.assert_close(
        mmd2(x.float(), y.float(), SIGMAS, estimator).double(), exact, rtol=1e-4, atol=0
    )


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_mmd2_pairs_replica_batches_up(float64, estimator):
    """(R, n, d) against (R, m, d) gives (R,): replica r's statistic from its own batches."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(3, 20, 4, generator=g), 0.5 + torch.randn(3, 30, 4, generator=g)
    got = mmd2(x, y, SIGMAS, estimator)
    assert got.shape == (3,)
    want = torch.stack([mmd2(x[r], y[r], SIGMAS, estimator) for r in range(3)])
    torch.testing.assert_close(got, want)


def test_kernel_is_the_sum_of_gaussians(float64):
    x, y = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])  # distance 5
    want = sum(math.exp(-25 / (2 * s * s)) for s in SIGMAS)
    torch.testing.assert_close(mix_rbf_kernel(x, y, SIGMAS), torch.tensor([[want]]))


@pytest.mark.parametrize("sigmas", [SIGMAS, (0.5, 1.0, 2.0), (1.0, 3.0, 7.0), (2.0,)])
def test_kernel_matrix_equals_each_gaussian_summed(float64, sigmas):
    """The kernel matrix (one expm1 and squarings on a bandwidth ladder sigma_min * 2^q,
    one expm1 per kernel otherwise) equals sum_q exp(-d^2 / (2 sigma_q^2)) computed one
    kernel at a time from the pairwise differences, at near and far distances."""
    g = torch.Generator().manual_seed(0)
    x, y = 3 * torch.randn(2, 40, 4, generator=g), 3 * torch.randn(2, 30, 4, generator=g)
    d2 = (x.unsqueeze(-2) - y.unsqueeze(-3)).pow(2).sum(-1)
    want = sum(torch.exp(-d2 / (2 * s * s)) for s in sigmas)
    torch.testing.assert_close(mix_rbf_kernel(x, y, sigmas), want)
    ladder = len(sigmas) > 1 and all(b == 2 * a for a, b in itertools.pairwise(sigmas))
    assert _doublings(tuple(0.5 / (s * s) for s in sigmas)) == (2 if ladder else None)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("sigmas", [SIGMAS, (1.0, 3.0, 7.0)])
def test_kernel_gradient_matches_finite_differences(float64, sigmas, estimator):
    """The kernel's hand-written backward (its derivative summed in the forward pass)
    against finite differences: torch.autograd.gradcheck on MMD^2 of both samples."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, generator=g, requires_grad=True)
    y = (0.5 + torch.randn(5, 3, generator=g)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: mmd2(a, b, sigmas, estimator), (x, y))


# -- the method ---------------------------------------------------------------------------


def tiny_problem(latent=3, hidden=(8,), batch=32, seed=0, lr=1e-3):
    def real(n, g):
        return torch.tensor([2.0, 0.0]) + 0.3 * torch.randn(n, 2, generator=g)

    return testing.tiny_problem((2,), latent, hidden, batch, seed, lr, lr, real=real)


def make(problem, **overrides):
    return MMDGAN(problem, MMDGAN.make_config(overrides))


def test_critic_weights_are_clipped_and_the_decoder_is_not(float64):
    p = tiny_problem()
    method = make(p)
    method.step(p.sample_real(32))
    enc = parameters_to_vector(method.f_enc.parameters())
    assert enc.abs().max() <= 0.01 and (enc.abs() == 0.01).any()
    assert parameters_to_vector(method.f_dec.parameters()).abs().max() > 0.01
    unclipped = make(tiny_problem(), clip=0.0)
    unclipped.step(p.sample_real(32))
    assert parameters_to_vector(unclipped.f_enc.parameters()).abs().max() > 0.01


def test_one_sided_penalty_charges_generated_feature_means_above_real_ones(float64):
    """h = mean_j relu(mean f(G(z))_j - mean f(x)_j): generated means (1, -1, 0.5) against
    real means 0 give h = (1 + 0 + 0.5) / 3; swapped, only the second feature is charged."""
    method = make(tiny_problem(), lambda_rg=16.0, sqrt_mmd=False)
    fx = torch.zeros(4, 3)
    fy = torch.tensor([1.0, -1.0, 0.5]).expand(4, 3)
    loss, m2 = method.discrepancy(fx, fy)
    torch.testing.assert_close(m2, mmd2(fx, fy, SIGMAS, "biased"))
    torch.testing.assert_close(loss, m2 - 16.0 * 0.5)
    below = -fy.abs()  # every generated mean at or below the real one: no charge
    torch.testing.assert_close(method.discrepancy(fx, below)[0], mmd2(fx, below, SIGMAS))
    swapped, m2_swapped = method.discrepancy(fy, fx)
    torch.testing.assert_close(swapped, m2_swapped - 16.0 / 3)
    method.cfg.sqrt_mmd = True  # the default: the code's sqrt(MMD^2)
    torch.testing.assert_close(method.discrepancy(fx, below)[0], mmd2(fx, below, SIGMAS).sqrt())


def test_critic_update_ascends_its_objective(float64):
    """One critic update on a fixed batch lowers -(L - lambda_ae * AE) on that batch: the
    critic maximises the discrepancy and keeps its autoencoder."""
    p = tiny_problem()
    method = make(p, clip=0.0)
    real = p.sample_real(32)
    fake = method.G(p.noise(32)).detach()
    before = method.critic_loss(real, fake)
    method.minimize(method.opt_c, before)
    assert method.critic_loss(real, fake) < before - 1e-6
    ae_only = make(tiny_problem(), clip=0.0, lambda_rg=0.0)
    fx = ae_only.features(real)
    objective = ae_only.discrepancy(fx, ae_only.features(fake))[0]
    ae = ae_only.autoencoder_error(real, fx) + ae_only.autoencoder_error(
        fake, ae_only.features(fake)
    )
    torch.testing.assert_close(ae_only.critic_loss(real, fake), -(objective - 8.0 * ae))
    torch.testing.assert_close(
        ae_only.autoencoder_error(real, fx), F.mse_loss(ae_only.f_dec(fx), real)
    )


@pytest.mark.parametrize("sqrt_mmd", [True, False])
def test_generator_updates_lower_mmd2_under_a_fixed_kernel(float64, sqrt_mmd):
    """G descends the discrepancy (here without the one-sided penalty, which G pushes the
    other way): twenty updates against a fixed critic cut MMD^2 on their batch tenfold."""
    p = tiny_problem(lr=1e-2)
    method = make(p, lambda_rg=0.0, sqrt_mmd=sqrt_mmd)
    for _ in range(3):  # a critic that has seen some training
        method.step(p.sample_real(32))
    real, z = p.sample_real(64), p.noise(64)

    def mmd_now():
        with torch.no_grad():
            return method.discrepancy(method.features(real), method.features(method.G(z)))[1]

    before = mmd_now()
    for _ in range(20):
        loss, _ = method.discrepancy(method.features(real).detach(), method.features(method.G(z)))
        method.minimize(method.opt_g, loss, inputs=list(method.G.parameters()))
    assert mmd_now() < 0.1 * before


def test_presets_and_feature_size():
    p = tiny_problem()
    paper = MMDGAN(p, MMDGAN.make_config({"preset": "paper"}))
    for opt in (paper.opt_g, paper.opt_c):
        assert isinstance(opt, torch.optim.RMSprop) and opt.param_groups[0]["lr"] == 5e-5
    literal = resolve("mmdgan[preset=algorithm-1]")[1]
    assert (literal.sqrt_mmd, literal.lambda_rg) == (False, 0.0) and paper.cfg.sqrt_mmd
    assert isinstance(make(p).opt_g, torch.optim.Adam)
    assert make(p).features(torch.zeros(5, 2)).shape == (5, 3)  # the latent's size
    assert make(p, features=4).features(torch.zeros(5, 2)).shape == (5, 4)
    assert make(p).cfg.sigmas == SIGMAS


@pytest.mark.parametrize(
    "selector, message",
    [
        ("mmdgan[estimator=linear]", "estimator must be one of biased, unbiased"),
        ("mmdgan[optimizer=sgd]", "optimizer must be one of adam, rmsprop"),
        ("mmdgan[clip=-0.01]", "clip must be >= 0"),
        ("mmdgan[n_critic=0]", "n_critic must be > 0"),
        ("mmdgan[sigma_min=0]", "sigma_min must be > 0"),
        ("mmdgan[lambda_ae=-8]", "lambda_ae must be >= 0"),
    ],
)
def test_bad_hyperparameters_are_refused(selector, message):
    with pytest.raises(McbenchError, match=message):
        resolve(selector)
