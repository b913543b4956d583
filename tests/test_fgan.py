"""f-GAN does what Nowozin et al. (2016) say: each conjugate is the supremum that defines
it, each output activation lands in its conjugate's domain, the variational bound is
tight at the optimal critic and below it elsewhere, and the "gan" divergence is the GAN."""

from __future__ import annotations

import math

import pytest
import torch

from mcbench import testing
from mcbench.errors import McbenchError
from mcbench.methods.blocks.divergences import DIVERGENCES, get_divergence
from mcbench.methods.blocks.losses import d_loss, g_loss_minimax, g_loss_nonsaturating
from mcbench.methods.fgan import FGAN
from mcbench.methods.gan import GAN
from mcbench.plugin.method import Problem
from mcbench.plugin.registry import resolve

# Points t inside dom f* whose maximiser u* = (f')^-1(t) lies well inside the u grid
# below (u* from about 0.02 to 25), written out here, not derived from the code.
T_GRID = {
    "kl": (-2.0, 3.0),  # u* = exp(t - 1)
    "rkl": (-5.0, -0.1),  # u* = -1 / t
    "pearson": (-1.9, 4.0),  # u* = 1 + t / 2
    "hellinger": (-3.0, 0.8),  # u* = 1 / (1 - t)^2
    "js": (-3.0, 0.6),  # u* = e^t / (2 - e^t), dom: t < log 2
    "gan": (-4.0, -0.1),  # u* = e^t / (1 - e^t)
}
# A point just outside dom f* (where sup_u {u t - f(u)} is +infinity), where there is one.
OUTSIDE = {"rkl": 0.05, "hellinger": 1.05, "js": math.log(2) + 0.05, "gan": 0.05}


def u_grid(upper: float = 100.0) -> torch.Tensor:
    return torch.logspace(-6, math.log10(upper), 200_001, dtype=torch.float64)


def sup_over_grid(f, t: torch.Tensor, upper: float = 100.0) -> torch.Tensor:
    u = u_grid(upper)
    return (t[:, None] * u[None, :] - f(u)[None, :]).amax(1)


def test_every_divergence_is_tested():
    assert set(T_GRID) == set(DIVERGENCES)


@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_conjugate_is_the_supremum_that_defines_it(name):
    """f*(t) = sup_u {u t - f(u)}, the supremum taken numerically over a fine grid of u
    (Table 2's closed forms against Table 1's generator functions)."""
    div = DIVERGENCES[name]
    lo, hi = T_GRID[name]
    t = torch.linspace(lo, hi, 13, dtype=torch.float64)
    assert div.in_domain(t).all()
    torch.testing.assert_close(div.conjugate(t), sup_over_grid(div.f, t), rtol=0, atol=1e-6)
    if name in OUTSIDE:  # outside dom f* the supremum is unbounded: it grows with the grid
        t_out = torch.tensor([OUTSIDE[name]], dtype=torch.float64)
        assert not div.in_domain(t_out).any()
        assert sup_over_grid(div.f, t_out, 1e4) > sup_over_grid(div.f, t_out, 1e2) + 1


@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_activation_maps_into_the_conjugates_domain(name):
    """g_f is increasing and maps every v into dom f*; f*(g_f(v)) as training computes it
    equals the composition, and stays finite in float32 where the composition would
    round onto the domain's edge."""
    div = DIVERGENCES[name]
    v = torch.linspace(-20, 20, 2001, dtype=torch.float64)
    t = div.activation(v)
    assert div.in_domain(t).all()
    assert (t[1:] > t[:-1]).all()
    torch.testing.assert_close(div.conjugate_of_activation(v), div.conjugate(t))
    wide = torch.linspace(-80, 80, 1601, dtype=torch.float32)
    assert torch.isfinite(div.conjugate_of_activation(wide)).all()


def gaussian_log_density(x: torch.Tensor, mu: float, sigma: float) -> torch.Tensor:
    return -0.5 * ((x - mu) / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))


# P = N(0, 1), Q = N(0.5, 1.2^2); closed forms (D_f(P || Q) = E_Q f(p/q) for Table 1's f)
M1, S1, M2, S2 = 0.0, 1.0, 0.5, 1.2
GAUSSIAN_CLOSED_FORM = {
    # KL(P || Q)
    "kl": math.log(S2 / S1) + (S1**2 + (M1 - M2) ** 2) / (2 * S2**2) - 0.5,
    # KL(Q || P)
    "rkl": math.log(S1 / S2) + (S2**2 + (M2 - M1) ** 2) / (2 * S1**2) - 0.5,
    # integral p^2/q - 1 (finite as 2 S2^2 > S1^2)
    "pearson": S2**2
    / (S1 * math.sqrt(2 * S2**2 - S1**2))
    * math.exp((M1 - M2) ** 2 / (2 * S2**2 - S1**2))
    - 1,
    # 2 - 2 x Bhattacharyya coefficient
    "hellinger": 2
    - 2
    * math.sqrt(2 * S1 * S2 / (S1**2 + S2**2))
    * math.exp(-((M1 - M2) ** 2) / (4 * (S1**2 + S2**2))),
}
N_MC = 400_000
TOL = 0.01  # Monte Carlo tolerance (absolute, nats); the standard errors are checked below it


def bound_at_optimal_critic(div, xp, xq, log_ratio):
    """The batch bound mean T*(x_P) - mean f*(T*(x_Q)) with T* = f'(p/q), and its Monte
    Carlo standard error."""
    tp = div.f_prime(torch.exp(log_ratio(xp)))
    fq = div.conjugate(div.f_prime(torch.exp(log_ratio(xq))))
    se = math.sqrt(float(tp.var()) / len(tp) + float(fq.var()) / len(fq))
    return float(tp.mean() - fq.mean()), se


@pytest.mark.parametrize("name", list(GAUSSIAN_CLOSED_FORM))
def test_bound_at_optimal_critic_is_the_divergence_between_gaussians(name):
    div = DIVERGENCES[name]
    g = torch.Generator().manual_seed(7)
    xp = M1 + S1 * torch.randn(N_MC, generator=g, dtype=torch.float64)
    xq = M2 + S2 * torch.randn(N_MC, generator=g, dtype=torch.float64)

    def log_ratio(x):
        return gaussian_log_density(x, M1, S1) - gaussian_log_density(x, M2, S2)

    estimate, se = bound_at_optimal_critic(div, xp, xq, log_ratio)
    assert se < TOL / 4, f"{name}: standard error {se:.4f} too large for the tolerance"
    assert abs(estimate - GAUSSIAN_CLOSED_FORM[name]) < TOL, (name, estimate)


P3 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
Q3 = torch.tensor([0.25, 0.35, 0.4], dtype=torch.float64)
M3 = (P3 + Q3) / 2
DISCRETE_CLOSED_FORM = {  # each divergence by its own definition, not through f
    "kl": float((P3 * (P3 / Q3).log()).sum()),
    "rkl": float((Q3 * (Q3 / P3).log()).sum()),
    "pearson": float(((P3 - Q3) ** 2 / Q3).sum()),
    "hellinger": float(((P3.sqrt() - Q3.sqrt()) ** 2).sum()),
    "js": float((P3 * (P3 / M3).log()).sum() + (Q3 * (Q3 / M3).log()).sum()),  # 2 JS
    "gan": float((P3 * (P3 / M3).log()).sum() + (Q3 * (Q3 / M3).log()).sum()) - math.log(4),
}


@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_bound_is_tight_at_the_optimal_critic_and_below_elsewhere(name):
    """On three-point distributions: the Monte Carlo bound at T* = f'(p/q) matches the
    divergence, its exact expectation equals it, and any other critic gives less."""
    div = DIVERGENCES[name]
    g = torch.Generator().manual_seed(11)
    xp = torch.multinomial(P3, 4 * N_MC, replacement=True, generator=g)
    xq = torch.multinomial(Q3, 4 * N_MC, replacement=True, generator=g)
    estimate, se = bound_at_optimal_critic(div, xp, xq, lambda i: (P3 / Q3).log()[i])
    want = DISCRETE_CLOSED_FORM[name]
    assert se < TOL / 4
    assert abs(estimate - want) < TOL, (name, estimate, want)

    def exact(t):
        return float((P3 * t).sum() - (Q3 * div.conjugate(t)).sum())

    t_star = div.f_prime(P3 / Q3)
    assert exact(t_star) == pytest.approx(want, abs=1e-12)
    for shift in (-0.3, -0.05, 0.05, 0.3):
        moved = t_star + shift
        if div.in_domain(moved).all():
            assert exact(moved) < want


def tiny_problem(seed: int = 0) -> Problem:
    return testing.tiny_problem(seed=seed, lr_g=1e-2, lr_d=1e-2)


def test_gan_divergence_trains_exactly_the_gan(float64):
    """divergence=gan: D's loss -F is the cross-entropy and the practical G loss is
    -log D(G(z)); trained side by side from one init and noise stream, f-GAN and the
    GAN method give the same losses and weights."""
    fgan = FGAN(tiny_problem(), FGAN.make_config({"divergence": "gan"}))
    gan = GAN(tiny_problem(), GAN.make_config({}))
    for _ in range(3):
        real = fgan.problem.sample_real(16)
        assert torch.equal(real, gan.problem.sample_real(16))
        a, b = fgan.step(real), gan.step(real)
        torch.testing.assert_close(a["d"], b["d"], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(a["g"], b["g"], rtol=1e-12, atol=1e-14)
    for p, q in zip(fgan.G.parameters(), gan.G.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_generator_losses_for_gan_divergence_are_goodfellows(float64):
    method = FGAN(tiny_problem(), FGAN.make_config({"divergence": "gan"}))
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    torch.testing.assert_close(-method.bound(real, fake), d_loss(method.V(real), method.V(fake)))
    torch.testing.assert_close(method.generator_loss(fake), g_loss_nonsaturating(method.V(fake)))
    method.cfg.g_loss = "minimax"
    torch.testing.assert_close(method.generator_loss(fake), g_loss_minimax(method.V(fake)))


def test_aliases_pick_the_divergence():
    for alias, div in [("fgan-kl", "kl"), ("fgan-rkl", "rkl"), ("fgan-pearson", "pearson")]:
        assert resolve(alias)[1].divergence == div
    assert resolve("fgan-js")[1].divergence == "js"
    assert resolve("fgan[divergence=hellinger]")[1].divergence == "hellinger"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"divergence": "kll"}, "unknown divergence 'kll' (did you mean 'kl'"),
        ({"g_loss": "saturating"}, "g_loss must be one of"),
        ({"d_steps": 0}, "d_steps must be > 0"),
    ],
)
def test_bad_config_is_one_clear_error(overrides, message):
    with pytest.raises(McbenchError, match=message.replace("(", r"\(")):
        FGAN.make_config(overrides)
    with pytest.raises(McbenchError):
        get_divergence("nope")
