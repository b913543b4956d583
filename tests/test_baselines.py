"""The GAN-family baselines do what their papers say (tiny CPU problems, float64)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parameters_to_vector

from mcbench import testing
from mcbench.errors import McbenchError
from mcbench.methods.blocks.losses import d_loss, g_loss_minimax, g_loss_nonsaturating
from mcbench.methods.blocks.unroll import AdamState, unroll
from mcbench.methods.gan_si import GANSI, sig_loss
from mcbench.methods.pacgan import PacGAN, pack
from mcbench.methods.unrolled_gan import UnrolledGAN
from mcbench.methods.veegan import VEEGAN
from mcbench.plugin.registry import resolve


def tiny_problem(data_shape=(2,), latent=3, hidden=(6,), batch=16, lr_d=0.05, seed=0):
    """A problem small enough for finite differences over every generator parameter."""
    return testing.tiny_problem(data_shape, latent, hidden, batch, seed, lr_g=1e-2, lr_d=lr_d)


def make(cls, problem, **overrides):
    return cls(problem, cls.make_config(overrides))


# -- Unrolled GAN ---------------------------------------------------------------------


def unrolled_setup(K, **overrides):
    """An unrolled GAN whose D optimiser already carries moments, and a fixed batch."""
    p = tiny_problem()
    method = make(UnrolledGAN, p, K=K, **overrides)
    for _ in range(3):
        method.step(p.sample_real(p.batch_size))
    return method, p.sample_real(p.batch_size), p.noise(p.batch_size)


def autograd_grad(method, real, z):
    loss = method.generator_loss(real, method.G(z))
    return parameters_to_vector(torch.autograd.grad(loss, list(method.G.parameters())))


def finite_difference_grad(method, real, z, h=1e-6):
    """Central differences of the loss after K look-ahead steps, one G weight at a time."""
    return testing.finite_differences(
        lambda: method.generator_loss(real, method.G(z)), list(method.G.parameters()), h
    )


@pytest.mark.parametrize("K", [1, 2])
def test_unrolled_gradient_matches_finite_differences(float64, K):
    method, real, z = unrolled_setup(K)
    d_before = parameters_to_vector(method.D.parameters()).clone()
    exact = autograd_grad(method, real, z)
    fd = finite_difference_grad(method, real, z)
    torch.testing.assert_close(exact, fd, rtol=1e-5, atol=1e-9)
    # The look-ahead leaves the live D untouched, and it matters: G's gradient differs
    # from the one against the current D, and from the one with Adam's v detached.
    assert torch.equal(parameters_to_vector(method.D.parameters()), d_before)
    method.cfg.K = 0
    assert not torch.allclose(exact, autograd_grad(method, real, z), rtol=1e-3)
    method.cfg.K, method.cfg.second_moment_grad = K, False
    assert not torch.allclose(autograd_grad(method, real, z), fd, rtol=1e-3)


@pytest.mark.parametrize(
    "g_loss, plain", [("minimax", g_loss_minimax), ("nonsaturating", g_loss_nonsaturating)]
)
def test_unrolled_with_K0_is_the_plain_gan_gradient(float64, g_loss, plain):
    method, real, z = unrolled_setup(0, g_loss=g_loss)
    params = list(method.G.parameters())
    want = torch.autograd.grad(plain(method.D(method.G(z))), params)
    torch.testing.assert_close(
        autograd_grad(method, real, z), parameters_to_vector(want), rtol=1e-12, atol=1e-14
    )


def test_first_look_ahead_step_is_the_live_adam_step(float64):
    """The unroll continues D's own Adam (moments carried): its first step lands exactly
    where D's ordinary optimiser step on the same batch does."""
    method, real, z = unrolled_setup(1)
    fake = method.G(z).detach()
    state = AdamState.from_optimizer(method.D, method.opt_d)
    assert state.step == 3
    ahead = unroll(method.D, lambda d: d_loss(d(real), d(fake)), state, 1, create_graph=False)
    method.opt_d.zero_grad()
    d_loss(method.D(real), method.D(fake)).backward()
    method.opt_d.step()
    for name, p in method.D.named_parameters():
        torch.testing.assert_close(p, ahead[name], rtol=1e-12, atol=1e-14)


def test_unrolled_rejects_negative_K():
    with pytest.raises(McbenchError, match="K must be >= 0"):
        UnrolledGAN.make_config({"K": -1})


# -- PacGAN ---------------------------------------------------------------------------


def test_pack_concatenates_m_consecutive_samples_along_dim1():
    x = torch.arange(7 * 2 * 3 * 3, dtype=torch.float32).reshape(7, 2, 3, 3)
    packed = pack(x, 3)
    assert packed.shape == (2, 6, 3, 3)  # 7 // 3 packs; the 7th sample is left out
    for i in range(2):
        for j in range(3):
            assert torch.equal(packed[i, 2 * j : 2 * j + 2], x[3 * i + j])
    points = torch.randn(10, 2)
    assert torch.equal(pack(points, 2)[1], torch.cat([points[2], points[3]]))


@pytest.mark.parametrize("data_shape", [(2,), (2, 3, 3)])
@pytest.mark.parametrize("m", [2, 3, 4])
def test_pacgan_discriminator_sees_packs_of_m(m, data_shape):
    p = tiny_problem(data_shape=data_shape, batch=10)
    seen: list[torch.Tensor] = []
    build_critic = p.critic

    def spy_critic(**kwargs):
        net = build_critic(**kwargs)
        net.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
        return net

    p.critic = spy_critic
    method = make(PacGAN, p, m=m)
    real = p.sample_real(10)
    method.step(real)
    k = 10 // m
    shape = (k, m * data_shape[0], *data_shape[1:])
    assert [tuple(x.shape) for x in seen] == [shape] * 3  # D(real), D(fake), D(fake) for G
    assert torch.equal(seen[0], pack(real, m))  # real packs hold only real samples
    # fake packs hold only generated samples: none of them appears in the real batch
    fakes = seen[1].reshape(k * m, -1)
    assert torch.cdist(fakes, real.reshape(10, -1)).min() > 0


def test_pacgan_aliases_and_small_batch():
    for m in (2, 3, 4):
        assert resolve(f"pacgan{m}")[1].m == m
    with pytest.raises(McbenchError, match="smaller than m"):
        make(PacGAN, tiny_problem(batch=2), m=3)


# -- VEEGAN ---------------------------------------------------------------------------


@pytest.mark.parametrize("reconstructor", ["l2", "gaussian"])
def test_veegan_reconstruction_decreases_on_a_fixed_generator(float64, reconstructor):
    p = tiny_problem(latent=2, hidden=(16,), batch=64)
    method = make(VEEGAN, p, reconstructor=reconstructor)
    for group in method.opt_g.param_groups:
        group["lr"] = 0.0  # the generator stays where it is; F and D train
    g_before = parameters_to_vector(method.G.parameters()).clone()
    z = p.noise(2000, rng=torch.Generator().manual_seed(9))
    with torch.no_grad():
        before = float(method.reconstruction(z))
    for _ in range(150):
        method.step(p.sample_real(p.batch_size))
    with torch.no_grad():
        after = float(method.reconstruction(z))
    assert torch.equal(parameters_to_vector(method.G.parameters()), g_before)
    assert after < before - 0.5 * abs(before)


def test_veegan_discriminator_labels_generated_pairs_one(float64):
    """D's loss is small when D says "generated" (logit > 0) on (G(z), z) pairs."""
    p = tiny_problem(latent=2, batch=64)
    method = make(VEEGAN, p)
    for _ in range(200):
        losses = method.step(p.sample_real(p.batch_size))
    z = p.noise(500)
    with torch.no_grad():
        gen = method.D(method.G(z), z).mean()
        x = p.sample_real(500)
        real = method.D(x, method.F(x)).mean()
    assert gen > real
    assert torch.isfinite(losses["recon"])


# -- GAN-SI ---------------------------------------------------------------------------


def test_sig_loss_is_the_mixture_negative_log_likelihood(float64):
    x, theta, sigma = torch.randn(5, 2), torch.randn(7, 2), 0.3
    comps = torch.distributions.Independent(torch.distributions.Normal(theta, sigma), 1)
    log_p = comps.log_prob(x[:, None, :])  # (5, 7)
    want = -(torch.logsumexp(log_p, 1) - torch.log(torch.tensor(7.0))).mean()
    torch.testing.assert_close(sig_loss(x, theta, sigma), want)


def test_gan_si_with_lambda_zero_is_a_gan(float64):
    """lam = 0 leaves only -log D(theta); lam > 0 changes the generator's update."""
    results = []
    for lam in (0.0, 1.0):
        p = tiny_problem(seed=4)
        method = make(GANSI, p, lam=lam)
        losses = method.step(p.sample_real(p.batch_size))
        results.append((losses, parameters_to_vector(method.G.parameters())))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l0["g"], l0["gan"])
    torch.testing.assert_close(l1["g"], l1["gan"] + l1["sig"])
    assert not torch.allclose(g0, g1)


def test_gan_si_rejects_negative_lambda():
    with pytest.raises(McbenchError, match="lam must be >= 0"):
        GANSI.make_config({"lam": -0.5})


@pytest.mark.parametrize("method", ["gan", "pacgan"])
def test_simultaneous_update_takes_both_gradients_at_the_same_weights(method):
    """PacGAN's code: G's gradient is taken against D before D's step, from the same
    draw D learns on; both equal the gradients computed by hand on copies of the nets."""
    import copy

    from mcbench.methods.blocks.losses import d_loss, g_loss_nonsaturating
    from mcbench.run.runner import RunSpec, build

    spec = RunSpec(method, "ring", 0, 2, 2, 100, params={"simultaneous": True})
    m, ds, data_rng = build(spec, torch.device("cpu"))
    real = ds.sample(m.problem.batch_size, data_rng, torch.device("cpu"))
    G0, D0 = copy.deepcopy(m.G), copy.deepcopy(m.D)
    state = m.problem.rng.get_state()
    m.step(real)
    # by hand: the same draw, both gradients at (G0, D0)
    rng = torch.Generator().manual_seed(0)
    rng.set_state(state)
    z = torch.randn(m.problem.batch_size, m.problem.latent_dim, generator=rng)
    pk = (lambda x: m.pack(x)) if method == "pacgan" else (lambda x: x)
    n = (real.shape[0] // getattr(m.cfg, "m", 1)) * getattr(m.cfg, "m", 1)
    fake = G0(z[:n])
    gg = torch.autograd.grad(g_loss_nonsaturating(D0(pk(fake))), list(G0.parameters()))
    gd = torch.autograd.grad(d_loss(D0(pk(real)), D0(pk(fake.detach()))), list(D0.parameters()))
    for p, g in zip(m.G.parameters(), gg, strict=True):
        torch.testing.assert_close(p.grad, g)
    for p, g in zip(m.D.parameters(), gd, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_simultaneous_needs_one_d_step():
    from mcbench.errors import McbenchError
    from mcbench.plugin.registry import resolve

    with pytest.raises(McbenchError, match="simultaneous=true takes exactly one D step"):
        resolve("gan", {"simultaneous": True, "d_steps": 2})
