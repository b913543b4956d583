"""Unrolled GAN, PacGAN, GAN-SI, ALI and VEEGAN as vectorised replicas.

R replicas trained together must be R sequential runs: same losses step by step, same
weights. Tiny problems in float64 (2-D MLPs and small DCGAN-style images, whose nets are
the per-replica loop) check this tightly; a few steps of the real protocol on `ring`
check it through the runner's `build_group`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mcbench.methods.ali import ALI
from mcbench.methods.blocks.losses import d_loss
from mcbench.methods.blocks.nets import DCGANFamily, DCGANSpec, MLPFamily
from mcbench.methods.blocks.unroll import AdamState, unroll
from mcbench.methods.gan_si import GANSI, sig_loss
from mcbench.methods.pacgan import PacGAN, pack
from mcbench.methods.unrolled_gan import UnrolledGAN
from mcbench.methods.veegan import VEEGAN
from mcbench.plugin.method import Method, Problem
from mcbench.plugin.replicas import replica_builder, replica_state
from mcbench.run.runner import RunSpec, build, build_group

CPU = torch.device("cpu")
SEEDS = (0, 1, 2)


# -- tiny problems, built sequentially and as one replica group -----------------------


TINY_IMAGE = DCGANSpec(
    g_dense=(8,), g_channels=(3,), g_kernel=3, d_channels=(3,), d_kernel=4, d_dense=(8,)
)


def family(data_shape: tuple[int, ...]):
    if len(data_shape) == 3:
        return DCGANFamily(data_shape, (8,), "relu", TINY_IMAGE)
    return MLPFamily(data_shape, (8,), "tanh")


def problem(data_shape, rng, place: Callable, replicas: int | None, batch: int) -> Problem:
    nets = family(data_shape)
    return Problem(
        data_shape=tuple(data_shape),
        latent_dim=3,
        device=CPU,
        rng=rng,
        lr_g=1e-2,
        lr_d=2e-2,
        betas=(0.5, 0.999),
        batch_size=batch,
        generator=place(nets.generator),
        critic=place(nets.critic),
        encoder=place(nets.encoder),
        mlp=place(nets.mlp),
        replicas=replicas,
    )


def sequential(cls: type[Method], overrides: dict, data_shape, batch: int) -> list[Method]:
    """One plain method per seed, initialised from torch's global stream at 100 + seed."""
    out = []
    for s in SEEDS:
        torch.manual_seed(100 + s)
        p = problem(data_shape, torch.Generator().manual_seed(s), lambda b: b, None, batch)
        out.append(cls(p, cls.make_config(overrides)))
    return out


def group(cls: type[Method], overrides: dict, data_shape, batch: int) -> Method:
    """The same seeds as one replica method (replica r initialised as run r)."""
    states = []
    for s in SEEDS:
        torch.manual_seed(100 + s)
        states.append(torch.get_rng_state())
    rngs = [torch.Generator().manual_seed(s) for s in SEEDS]

    def place(build):
        return replica_builder(build, states, CPU)

    p = problem(data_shape, rngs, place, len(SEEDS), batch)
    return cls(p, cls.make_config(overrides))


def real_batches(data_shape, batch: int, steps: int) -> list[list[torch.Tensor]]:
    """Per step, one real batch per seed (images in [0, 1])."""
    gens = [torch.Generator().manual_seed(50 + s) for s in SEEDS]
    draw = torch.rand if len(data_shape) == 3 else torch.randn
    return [[draw(batch, *data_shape, generator=g) for g in gens] for _ in range(steps)]


def assert_group_is_sequential(cls, overrides, data_shape, batch=12, steps=4, tol=1e-9):
    seq = sequential(cls, overrides, data_shape, batch)
    grp = group(cls, overrides, data_shape, batch)
    for reals in real_batches(data_shape, batch, steps):
        want = [m.step(x) for m, x in zip(seq, reals, strict=True)]
        got = grp.step(torch.stack(reals))
        assert set(got) == set(want[0])
        for key, value in got.items():
            assert value.shape == (len(SEEDS),) and not value.requires_grad, key
            expected = torch.stack([w[key] for w in want])
            torch.testing.assert_close(value, expected, rtol=tol, atol=tol, msg=key)
    for name, module in grp.modules().items():
        for r, m in enumerate(seq):
            mine = replica_state(module.state_dict(), r)
            for k, v in m.modules()[name].state_dict().items():
                torch.testing.assert_close(mine[k], v, rtol=tol, atol=tol, msg=f"{name}.{k}")
    return seq, grp


CASES = [
    (UnrolledGAN, {"K": 0}),
    (UnrolledGAN, {"K": 1}),
    (UnrolledGAN, {"K": 2, "g_loss": "nonsaturating"}),
    (UnrolledGAN, {"K": 2, "second_moment_grad": False}),
    (PacGAN, {"m": 2}),
    (PacGAN, {"m": 5}),  # 12 = 2 * 5 + 2: the last two samples are left out
    (GANSI, {}),
    (GANSI, {"lam": 0.5, "sigma": 0.5, "d_steps": 2}),
    (ALI, {}),
    (ALI, {"d_steps": 2}),
    (VEEGAN, {}),
    (VEEGAN, {"reconstructor": "gaussian"}),
]


def case_id(case) -> str:
    cls, overrides = case
    return cls.name + "".join(f"-{k}={v}" for k, v in overrides.items())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_replicas_equal_sequential_runs_2d(float64, case):
    assert case[0].vectorized
    assert_group_is_sequential(*case, data_shape=(2,))


IMAGE_CASES = [
    (UnrolledGAN, {"K": 1}),
    (PacGAN, {"m": 2}),
    (GANSI, {}),
    (ALI, {}),
    (VEEGAN, {"reconstructor": "gaussian"}),
]


@pytest.mark.parametrize("case", IMAGE_CASES, ids=case_id)
def test_replicas_equal_sequential_runs_images(float64, case):
    """Conv nets with batch norm (the per-replica loop): the same layouts must hold."""
    assert_group_is_sequential(*case, data_shape=(1, 8, 8), batch=6, steps=2)


# -- method-specific ------------------------------------------------------------------


def test_unrolled_look_ahead_and_generator_gradient_per_replica(float64):
    """After a few steps (D's Adam moments built up), K look-ahead steps of each replica's
    D land where its own run's do, and G's gradient through them is its own run's."""
    K = 3
    seq, grp = assert_group_is_sequential(UnrolledGAN, {"K": K}, (2,), steps=3)
    reals = real_batches((2,), 12, 4)[-1]
    zs = [torch.randn(12, 3, generator=torch.Generator().manual_seed(70 + s)) for s in SEEDS]
    real, z = torch.stack(reals), torch.stack(zs)

    def look_ahead(method, real, fake):
        state = AdamState.from_optimizer(method.D, method.opt_d)
        assert state.step == 3
        loss = lambda d: d_loss(d(real), d(fake))  # noqa: E731
        return unroll(method.D, loss, state, K, create_graph=False)

    ahead = look_ahead(grp, real, grp.G(z).detach())
    loss = grp.generator_loss(real, grp.G(z))
    assert loss.shape == (len(SEEDS),)
    grads = torch.autograd.grad(loss.sum(), list(grp.G.parameters()))
    for r, m in enumerate(seq):
        want = look_ahead(m, reals[r], m.G(zs[r]).detach())
        assert set(want) == set(ahead)
        for name, p in want.items():
            torch.testing.assert_close(ahead[name][r], p, rtol=1e-10, atol=1e-12)
        want_loss = m.generator_loss(reals[r], m.G(zs[r]))
        torch.testing.assert_close(loss[r], want_loss, rtol=1e-10, atol=1e-12)
        want_grads = torch.autograd.grad(want_loss, list(m.G.parameters()))
        for g, w in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(g[r], w, rtol=1e-9, atol=1e-12)
        # the look-ahead moved away from the live D, which it left as it was
        for name, p in m.D.named_parameters():
            assert not torch.allclose(want[name], p)
    for name, p in grp.D.named_parameters():
        assert not torch.allclose(ahead[name], p)


@pytest.mark.parametrize("shape", [(2,), (2, 3, 3)])
@pytest.mark.parametrize("m", [2, 3, 4])
def test_pack_packs_each_replica_along_its_samples(shape, m):
    x = torch.randn(3, 7, *shape)
    packed = pack(x, m, dim=1)
    assert packed.shape == (3, 7 // m, m * shape[0], *shape[1:])
    for r in range(3):
        assert torch.equal(packed[r], pack(x[r], m))
    assert torch.equal(pack(x[0], m, dim=0), pack(x[0], m))


def test_pacgan_group_discriminator_sees_each_replicas_own_packs(float64):
    grp = group(PacGAN, {"m": 3}, (2,), 10)
    seen: list[torch.Tensor] = []
    grp.D.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    real = torch.randn(len(SEEDS), 10, 2)
    grp.step(real)
    assert [tuple(x.shape) for x in seen] == [(len(SEEDS), 3, 6)] * 3
    for r in range(len(SEEDS)):
        assert torch.equal(seen[0][r], pack(real[r], 3))
        fakes = seen[1][r].reshape(9, 2)
        assert torch.cdist(fakes, real[r]).min() > 0  # generated packs: no real sample


@pytest.mark.parametrize("shape", [(2,), (1, 4, 4)])
def test_sig_loss_per_replica(float64, shape):
    x, theta = torch.randn(3, 5, *shape), torch.randn(3, 7, *shape)
    got = sig_loss(x, theta, 0.3, dim=1)
    assert got.shape == (3,)
    torch.testing.assert_close(got, torch.stack([sig_loss(x[r], theta[r], 0.3) for r in range(3)]))


# -- the real protocol, through the runner ----------------------------------------------


@pytest.mark.parametrize("name", ["unrolled-gan", "pacgan3", "gan-si", "ali", "veegan"])
def test_build_group_matches_sequential_runs_on_ring(name):
    """A few steps of the real 2-D protocol (float32): R = 2 replicas vs two runs."""
    steps, seeds = 3, (0, 1)
    specs = [RunSpec(name, "ring", s, steps, steps, 100) for s in seeds]
    seq = []
    for spec in specs:
        method, _, _ = build(spec, CPU)
        batch = method.problem.batch_size
        seq.append([method.step(method.problem.sample_real(batch)) for _ in range(steps)])
    method, _, _ = build_group(specs, CPU)
    assert method.problem.replicas == len(seeds)
    batch = method.problem.batch_size
    for t in range(steps):
        got = method.step(method.problem.sample_real(batch))
        for key, value in got.items():
            want = torch.stack([seq[r][t][key] for r in range(len(seeds))])
            torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-6, msg=key)
