"""LBT, LBT-GAN and LBT-implicit as replicas: R seeds trained together give each seed's
own sequential run (losses, curves, weights), clipping and CG step sizes per replica.
Tiny nets in float64 on the CPU, so agreement is to rounding (~1e-12), not to float32's
sensitivity; the whole file takes a few seconds."""

from __future__ import annotations

import pytest
import torch

from mcbench.methods.blocks.nets import MLPFamily
from mcbench.methods.lbt import LBT
from mcbench.methods.lbt_gan import LBTGAN
from mcbench.methods.lbt_implicit import LBTImplicit, conjugate_gradient, replica_dot
from mcbench.plugin.method import Problem
from mcbench.plugin.replicas import per_replica_sum, replica_builder, replica_state

CPU = torch.device("cpu")
SEEDS = (0, 1, 2)
N = 8  # batch size
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


@pytest.fixture(autouse=True)
def _float64(float64):
    """Every test here runs in float64 (the shared fixture in conftest.py)."""


def problem(seeds: tuple[int, ...] | int, shape=(2,), family: str = "mixture2d") -> Problem:
    """tests/test_lbt.py's tiny problem for one seed (an int), or its replica form for
    several: replica r built, seeded and fed exactly as the problem of seeds[r]."""
    fam = MLPFamily(shape, (6,), "tanh")
    one = isinstance(seeds, int)
    group = [seeds] if one else list(seeds)
    rngs = [torch.Generator().manual_seed(s) for s in group]
    data = [torch.Generator().manual_seed(s + 1000) for s in group]

    def draw(n: int, g: torch.Generator) -> torch.Tensor:
        return 0.5 * torch.randn(n, *shape, generator=g) + 0.3

    if one:
        torch.manual_seed(seeds)
        nets = {k: getattr(fam, k) for k in ("generator", "critic", "encoder", "mlp")}

        def sample_real(n: int) -> torch.Tensor:
            return draw(n, data[0])

    else:
        states = []
        for s in group:
            torch.manual_seed(s)
            states.append(torch.get_rng_state())
        nets = {
            k: replica_builder(getattr(fam, k), states, CPU)
            for k in ("generator", "critic", "encoder", "mlp")
        }

        def sample_real(n: int) -> torch.Tensor:
            return torch.stack([draw(n, g) for g in data])

    return Problem(
        data_shape=shape,
        latent_dim=3,
        device=CPU,
        rng=rngs[0] if one else rngs,
        lr_g=1e-3,
        lr_d=1e-2,
        betas=(0.5, 0.999),
        batch_size=N,
        estimator_hidden=(5,),
        sample_real=sample_real,
        family=family,
        replicas=None if one else len(group),
        **nets,
    )


def make(cls, seeds, shape=(2,), family="mixture2d", **overrides):
    cfg = cls.make_config({"vae_latent": 2, "decoder_var": 0.1, "M": 2, "K": 2, **overrides})
    return cls(problem(seeds, shape, family), cfg)


CASES = [
    pytest.param(LBT, (2,), {}, id="lbt"),
    pytest.param(LBT, (1, 3, 3), {"learn_var": True}, id="lbt-images-learn-var"),
    pytest.param(LBTGAN, (2,), {"d_steps": 2}, id="lbt-gan"),
    pytest.param(LBTImplicit, (2,), {}, id="lbt-implicit-cg"),
    pytest.param(LBTImplicit, (2,), {"solver": "neumann"}, id="lbt-implicit-neumann"),
]


@pytest.mark.parametrize(("cls", "shape", "overrides"), CASES)
def test_replicas_are_the_sequential_runs(cls, shape, overrides):
    """Losses per step, ELBO curves and final generator weights of each replica equal
    those of its seed's own run."""
    steps = 3
    seq = []
    for s in SEEDS:
        m = make(cls, s, shape, **overrides)
        losses = [m.step(m.problem.sample_real(N)) for _ in range(steps)]
        seq.append((losses, m.diagnostics(), m.G.state_dict()))
    group = make(cls, SEEDS, shape, **overrides)
    assert cls.vectorized and group.problem.replicas == len(SEEDS)
    losses = [group.step(group.problem.sample_real(N)) for _ in range(steps)]
    curves = group.diagnostics()
    state = group.G.state_dict()
    for r, (want_losses, want_curves, want_g) in enumerate(seq):
        for got, want in zip(losses, want_losses, strict=True):
            assert set(got) == set(want)
            for k, v in got.items():
                assert v.shape == (len(SEEDS),) and not v.requires_grad
                torch.testing.assert_close(v[r], want[k], **TIGHT)
        assert set(curves) == set(want_curves)
        for k, v in curves.items():
            assert v.shape == (len(SEEDS),)
            assert float(v[r]) == pytest.approx(want_curves[k], rel=1e-10)
        for k, v in replica_state(state, r).items():
            torch.testing.assert_close(v, want_g[k], **TIGHT)
    assert group.sample(5).shape == (len(SEEDS), 5, *shape)


def test_clipping_is_per_replica():
    """A replica whose real data (hence generator gradient) is huge is clipped to the
    norm, and its neighbour's clipped gradient is still exactly its own run's."""
    clip = 1.0
    plain = make(LBT, 0, clip_norm=clip)
    plain.step(plain.problem.sample_real(N))
    group = make(LBT, (0, 1), clip_norm=clip)
    real = group.problem.sample_real(N)
    real[1] *= 1e3
    group.step(real)
    grads = [p.grad for p in group.G.parameters()]
    norms = torch.stack([per_replica_sum(g.square()) for g in grads]).sum(0).sqrt()
    assert float(norms[1]) == pytest.approx(clip, rel=1e-6)  # huge, clipped to the norm
    for g, want in zip(grads, (p.grad for p in plain.G.parameters()), strict=True):
        torch.testing.assert_close(g[0], want, **TIGHT)


def test_conjugate_gradient_solves_each_replica_on_its_own():
    """R block systems of different conditioning, one indefinite: CG with per-replica dot
    products gives, for each replica, the iterate of plain CG on that replica alone (a
    shared step size would mix them), and with enough iterations the exact solution."""
    gen = torch.Generator().manual_seed(0)
    sizes = (4, 2 * 3)  # a vector of two tensors: (R, 4) and (R, 2, 3)
    dim = sum(sizes)
    mats = []
    for scale in (1.0, 50.0):
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen))
        mats.append(q @ torch.diag(torch.linspace(1.0, scale, dim)) @ q.T)
    mats.append(-torch.eye(dim))  # non-positive curvature: the iterate stays at zero
    a = torch.stack(mats)
    b = [torch.randn(3, 4, generator=gen), torch.randn(3, 2, 3, generator=gen)]

    def flat(v):
        return torch.cat([x.reshape(x.shape[0], -1) for x in v], dim=1)

    def unflat(f, like):
        return [f[:, :4].reshape(like[0].shape), f[:, 4:].reshape(like[1].shape)]

    def apply(v):  # replica r's product uses only replica r's matrix and vector
        return unflat(torch.einsum("rij,rj->ri", a, flat(v)), v)

    got = {}
    for iterations in (3, dim):
        got[iterations] = flat(conjugate_gradient(apply, b, iterations, dot=replica_dot))
        for r in range(3):

            def apply_r(v, r=r):
                one = [x.unsqueeze(0) for x in v]
                return [x[0] for x in unflat((a[r] @ flat(one)[0]).unsqueeze(0), one)]

            want = conjugate_gradient(apply_r, [x[r] for x in b], iterations)
            want = flat([x.unsqueeze(0) for x in want])[0]
            torch.testing.assert_close(got[iterations][r], want, **TIGHT)
    exact = torch.linalg.solve(a[:2], flat(b)[:2])
    torch.testing.assert_close(got[dim][:2], exact, rtol=1e-8, atol=1e-10)
    assert torch.equal(got[dim][2], torch.zeros(dim))
    # one step size for all replicas (the plain dot) gives other iterates: not vacuous
    shared = flat(conjugate_gradient(apply, b, 3))
    assert not torch.allclose(shared, got[3], rtol=1e-3)
