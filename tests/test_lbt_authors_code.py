"""LBT / LBT-GAN options that follow the authors' code (taufikxu/Learning-By-Teaching):
Bernoulli decoder, GAN-only warm-up, fresh GAN samples, Glorot init, eps inside Adam's
square root, per-dataset settings under `authors-code`, and the memory check on K and M.
Tiny nets in float64 on the CPU; the whole file takes a few seconds."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_lbt import build, tiny_problem
from test_replicas_lbt import SEEDS, TIGHT, make
from torch import nn

from mcbench.errors import McbenchError
from mcbench.methods.blocks.nets import MLPFamily
from mcbench.methods.blocks.unroll import AdamState, adam_eps_inside_, adam_step, unroll
from mcbench.methods.blocks.vae import VAE
from mcbench.methods.lbt import LBT, LBTConfig
from mcbench.methods.lbt_gan import LBTGAN, LBTGANConfig
from mcbench.methods.lbt_implicit import LBTImplicit
from mcbench.plugin.protocol import get_protocol
from mcbench.plugin.replicas import StackedLinear, replica_state


@pytest.fixture(autouse=True)
def _float64(float64):
    """Every test here runs in float64 (the shared fixture in conftest.py)."""


def test_bernoulli_decoder_log_likelihood_is_the_closed_form():
    """ELBO = sum_d [x log s(l) + (1 - x) log(1 - s(l))] - KL, with l the decoder's logits."""
    problem = tiny_problem(shape=(1, 2, 2))
    vae = VAE(problem, latent_dim=2, likelihood="bernoulli")
    x = torch.rand(3, 1, 2, 2)
    eps = torch.randn(3, 2)
    mu, logvar = vae.encoder(x.flatten(1)).chunk(2, dim=-1)
    logits = vae.decoder(mu + (0.5 * logvar).exp() * eps)
    p = torch.sigmoid(logits)
    log_px = (x.flatten(1) * p.log() + (1 - x.flatten(1)) * (1 - p).log()).sum(-1)
    kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(-1)
    torch.testing.assert_close(vae(x, eps), log_px - kl)
    torch.testing.assert_close(vae.decode_mean(mu + 0 * eps), torch.sigmoid(vae.decoder(mu)))
    with pytest.raises(McbenchError, match="likelihood"):
        VAE(problem, likelihood="poisson")
    with pytest.raises(McbenchError, match="learn_var"):
        LBT.make_config({"likelihood": "bernoulli", "learn_var": True})


def test_warmup_trains_the_gan_alone():
    """During the first `warmup` updates E never moves and G's loss has no ELBO term."""
    m = build(LBTGAN, warmup=2, K=2)
    e0 = {k: v.clone() for k, v in m.E.state_dict().items()}
    calls = []
    real_loss = m.unrolled_real_loss
    m.unrolled_real_loss = lambda *a: calls.append(1) or real_loss(*a)
    for _ in range(2):
        logs = m.step(m.problem.sample_real(8))
        assert float(logs["elbo_weight"]) == 0.0 and float(logs["elbo_real_unrolled"]) == 0.0
        assert float(logs["elbo_fake"]) == 0.0 and math.isfinite(float(logs["g_gan"]))
    assert not calls and m.updates == 2
    for k, v in m.E.state_dict().items():
        torch.testing.assert_close(v, e0[k], rtol=0, atol=0)
    logs = m.step(m.problem.sample_real(8))
    assert float(logs["elbo_weight"]) == 1.0 and calls and m.updates == 2
    assert any(not torch.equal(v, e0[k]) for k, v in m.E.state_dict().items())
    # A checkpoint from before the warm-up existed (no counter) loads as "none run".
    del m.unrolled_real_loss  # the instrument, not state
    state = {k: v for k, v in m.extra_state().items() if k != "value.updates"}
    m.load_extra_state(state)
    assert m.updates == 0


def _record(m: LBTGAN) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Instrument D's inputs and the unrolled batches of one step."""
    d_inputs: list[torch.Tensor] = []
    unrolled: list[torch.Tensor] = []
    d_forward = m.D.forward
    m.D.forward = lambda x, *a: d_inputs.append(x.detach().clone()) or d_forward(x, *a)
    fresh = m.fresh_fakes

    def record_fakes(n: int, k: int) -> list[torch.Tensor]:
        out = fresh(n, k)
        unrolled.extend(f.detach().clone() for f in out)
        return out

    m.fresh_fakes = record_fakes
    real = m.problem.sample_real(8)
    m.step(real)
    fakes = [x for x in d_inputs if not torch.equal(x, real)]
    return fakes, unrolled


@pytest.mark.parametrize("fresh", [False, True])
def test_gan_term_uses_fresh_samples(fresh):
    """fresh_samples: D's step and the GAN term each see their own new batch, none of the
    unrolled ones; otherwise both reuse the first unrolled batch (the class default)."""
    fakes, unrolled = _record(build(LBTGAN, K=3, fresh_samples=fresh))
    assert len(fakes) == 2 and len(unrolled) == 3  # D step, then the GAN term
    if fresh:
        assert not torch.equal(fakes[0], fakes[1])
        assert not any(torch.allclose(f, u) for f in fakes for u in unrolled)
    else:
        assert torch.equal(fakes[0], unrolled[0]) and torch.equal(fakes[1], unrolled[0])


def _layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Linear, StackedLinear))]


def test_glorot_init_bounds_zero_biases_and_replicas():
    """init=glorot: |w| <= sqrt(6 / (fan_in + fan_out)), biases 0, every weight redrawn;
    vectorised replicas start and train exactly as their seeds' sequential runs."""
    m = build(LBTGAN, init="glorot")
    torch_init = build(LBTGAN)
    for net in ("G", "E", "D"):
        got, before = _layers(getattr(m, net)), _layers(getattr(torch_init, net))
        assert got
        for layer, old in zip(got, before, strict=True):
            fan_out, fan_in = layer.weight.shape
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert layer.weight.abs().max() <= bound
            assert layer.weight.abs().max() > 0.3 * bound
            assert not torch.equal(layer.weight, old.weight)
            assert torch.count_nonzero(layer.bias) == 0
    seq = []
    for s in SEEDS:
        one = make(LBTGAN, s, init="glorot")
        start = {n: dict(getattr(one, n).state_dict()) for n in ("G", "E", "D")}
        seq.append((start, one.step(one.problem.sample_real(8))))
    group = make(LBTGAN, SEEDS, init="glorot")
    start = {n: dict(getattr(group, n).state_dict()) for n in ("G", "E", "D")}
    losses = group.step(group.problem.sample_real(8))
    for r, (want_start, want_losses) in enumerate(seq):
        for n in ("G", "E", "D"):
            for k, v in replica_state(start[n], r).items():
                torch.testing.assert_close(v, want_start[n][k], **TIGHT)
        for k, v in losses.items():
            torch.testing.assert_close(v[r], want_losses[k], **TIGHT)


def test_adam_eps_inside_against_a_hand_computation():
    """One step from zero moments, p = 1, g = 0.5, lr 0.1, eps 0.01 (large, to tell them
    apart): outside p - lr m^ / (sqrt(v^) + eps); inside p - lr m^ / sqrt(v^ + eps / bc2)
    (the authors' lr_t m / sqrt(v + eps))."""
    b1, b2, lr, eps, g = 0.9, 0.999, 0.1, 0.01, 0.5
    m, v = (1 - b1) * g, (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1), v / (1 - b2)
    want = {
        False: 1 - lr * m_hat / (math.sqrt(v_hat) + eps),
        True: 1 - lr * math.sqrt(1 - b2) / (1 - b1) * m / math.sqrt(v + eps),
    }
    assert abs(want[True] - want[False]) > 1e-3
    for inside, value in want.items():
        state = AdamState(0, {"p": torch.zeros(1)}, {"p": torch.zeros(1)}, lr, (b1, b2), eps)
        new, st = adam_step({"p": torch.ones(1)}, {"p": torch.tensor([g])}, state, False, inside)
        assert new["p"].item() == pytest.approx(value, rel=1e-12)
        assert st.step == 1 and st.exp_avg["p"].item() == pytest.approx(m)
    # The estimator's own optimiser step with eps inside is the same update, in place,
    # over several steps (moments and step count carried in torch.optim.Adam's state).
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.Adam([p], lr=lr, betas=(b1, b2), eps=eps)
    params = {"p": p.detach().clone()}
    state = AdamState(0, {"p": torch.zeros(2)}, {"p": torch.zeros(2)}, lr, (b1, b2), eps)
    for i in range(3):
        grad = torch.tensor([0.5, 0.1 * i - 0.3])
        p.grad = grad.clone()
        adam_eps_inside_(opt)
        params, state = adam_step(params, {"p": grad}, state, eps_inside=True)
        torch.testing.assert_close(p.detach(), params["p"], **TIGHT)
    assert AdamState.from_optimizer(nn.ParameterDict({"p": p}), opt).step == 3


def test_authors_code_preset_per_dataset():
    """Class defaults are unchanged; `authors-code` adds the faithful options and, on
    Stacked MNIST, the authors' settings for that script, except where the run sets a
    field itself."""
    assert dataclasses.asdict(LBTConfig()) == {
        **dict.fromkeys(("learn_var", "adam_defaults"), False),
        "K": 5,
        "M": 10,
        "est_lr_mult": 3.0,
        "unroll_lr_mult": 1.0,
        "vae_latent": 32,
        "decoder_var": 1e-3,
        "clip_norm": 5.0,
        "likelihood": "gaussian",
        "adam_eps_inside": False,
        "init": "pytorch",
        "sample_train_bn": False,
        "per_dataset": False,
    }
    assert LBTGANConfig().warmup == 0 and not LBTGANConfig().fresh_samples
    cfg = LBTGAN.make_config({"preset": "authors-code", "K": 2})
    assert cfg.adam_eps_inside and cfg.init == "glorot" and cfg.per_dataset
    ring = LBTGAN.for_family(cfg, "mixture2d")
    assert ring == cfg
    smnist = LBTGAN.for_family(cfg, "stacked-mnist-d0.5")
    assert (smnist.M, smnist.vae_latent, smnist.likelihood) == (15, 256, "bernoulli")
    assert smnist.clip_norm == 0 and smnist.sample_train_bn
    assert smnist.warmup == 3001 and smnist.fresh_samples and smnist.K == 2
    mine = LBTGAN.for_family(dataclasses.replace(cfg, M=4, warmup=7), "stacked-mnist")
    assert (mine.M, mine.warmup, mine.vae_latent) == (4, 7, 256)
    plain = LBT.for_family(LBT.make_config({"preset": "authors-code"}), "stacked-mnist")
    assert plain.M == 15 and not hasattr(plain, "warmup")
    assert LBTGAN.for_family(LBTGAN.make_config({}), "stacked-mnist") == LBTGAN.make_config({})
    # A built method records the settings it runs with.
    m = build(LBTGAN, family="stacked-mnist", shape=(1, 2, 2), preset="authors-code")
    assert m.cfg.likelihood == "bernoulli" and m.E.likelihood == "bernoulli"
    logs = m.step(m.problem.sample_real(8))
    assert all(math.isfinite(float(v)) for v in logs.values())


def test_sample_in_training_mode_batch_norm_leaves_no_trace():
    """sample_train_bn: batch statistics per chunk, running statistics untouched."""
    fam = MLPFamily((2,), (6,), "tanh", g_batchnorm=True)
    problem = dataclasses.replace(tiny_problem(), generator=fam.generator)
    m = LBT(problem, LBT.make_config({"vae_latent": 2, "M": 2, "sample_train_bn": True}))
    bufs = [b.clone() for b in m.G.buffers()]
    assert bufs
    x = m.sample(20)
    assert x.shape == (20, 2) and m.G.training
    for b, old in zip(m.G.buffers(), bufs, strict=True):
        assert torch.equal(b, old)
    # Eval-mode sampling (the default) differs on the same codes: running statistics.
    a = m.sample(8, rng=torch.Generator().manual_seed(5))
    m.cfg.sample_train_bn = False
    b = m.sample(8, rng=torch.Generator().manual_seed(5))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("cls", [LBT, LBTGAN, LBTImplicit])
def test_impossible_unroll_is_refused_before_allocating(cls):
    """K = 1e9 is refused at planning (`check_protocol`) and at construction, with the
    estimate in one line."""
    cfg = cls.make_config({"K": 10**9})
    with pytest.raises(McbenchError, match=r"K=1000000000.*need at least .* (TB|PB)") as err:
        cls.check_protocol(cfg, get_protocol("mixture2d"))
    assert "\n" not in str(err.value)
    with pytest.raises(McbenchError, match="need at least"):
        cls(tiny_problem(), cls.make_config({"K": 10**12, "vae_latent": 2}))
    with pytest.raises(McbenchError, match="M=10000000000"):
        cls.check_protocol(cls.make_config({"M": 10**10}), get_protocol("stacked-mnist"))
    cls.check_protocol(cls.make_config({"preset": "authors-code"}), get_protocol("stacked-mnist"))


def test_replicas_equal_sequential_under_the_authors_stacked_mnist_settings():
    """Warm-up, fresh samples, Bernoulli decoder, Glorot init and eps inside, together:
    each replica's losses and generator equal its seed's own run, across the warm-up's
    end."""
    over = {"preset": "authors-code", "warmup": 1, "d_steps": 2}
    shape, fam = (1, 2, 2), "stacked-mnist"
    seq = []
    for s in SEEDS:
        one = make(LBTGAN, s, shape, fam, **over)
        assert one.cfg.likelihood == "bernoulli" and one.cfg.fresh_samples
        seq.append(([one.step(one.problem.sample_real(8)) for _ in range(3)], one.G.state_dict()))
    group = make(LBTGAN, SEEDS, shape, fam, **over)
    losses = [group.step(group.problem.sample_real(8)) for _ in range(3)]
    for r, (want_losses, want_g) in enumerate(seq):
        for got, want in zip(losses, want_losses, strict=True):
            assert set(got) == set(want)
            for k, v in got.items():
                torch.testing.assert_close(v[r], want[k], **TIGHT)
        for k, v in replica_state(group.G.state_dict(), r).items():
            torch.testing.assert_close(v, want_g[k], **TIGHT)
    assert group.sample(5).shape == (len(SEEDS), 5, *shape)


def test_warmup_refuses_graph_capture(monkeypatch):
    """A CUDA graph captured during the warm-up would replay the GAN-only update forever:
    the step refuses while capturing (the harness then runs eagerly), after it not."""
    m = build(LBTGAN, warmup=1, K=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(McbenchError, match="warm-up cannot be graph-captured"):
        m.step(m.problem.sample_real(8))
    m.updates = 1
    m.step(m.problem.sample_real(8))


def test_unroll_places_eps_as_asked():
    """`unroll(eps_inside=...)` takes `adam_step`'s update with that placement."""
    net = nn.Linear(2, 1)
    x = torch.randn(4, 2)
    zeros = {k: torch.zeros_like(p) for k, p in net.named_parameters()}
    state = AdamState(0, zeros, dict(zeros), 0.1, (0.9, 0.999), 1e-2)
    for inside in (False, True):
        got = unroll(net, lambda f: f(x).square().mean(), state, 2, eps_inside=inside)
        params, st = dict(net.named_parameters()), state
        for _ in range(2):
            loss = torch.func.functional_call(net, params, (x,)).square().mean()
            grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
            params, st = adam_step(params, grads, st, eps_inside=inside)
        for k, v in got.items():
            torch.testing.assert_close(v, params[k], **TIGHT)


def test_authors_grid_runs_three_estimator_updates():
    """The authors' grid command (-n_est 3): M = 15 on `grid` under per_dataset, from the
    Problem's dataset name; the ring keeps M = 10; a run's own M wins."""
    from mcbench.run.runner import RunSpec
    from mcbench.run.runner import build as build_run

    def built(dataset: str, params: dict) -> LBT:
        spec = RunSpec("lbt", dataset, 0, 1, 1, 100, params=params, protocol="lbt")
        return build_run(spec, torch.device("cpu"))[0]

    grid = built("grid", {"preset": "authors-code"})
    assert grid.problem.dataset == "grid" and grid.cfg.M == 15
    assert built("ring", {"preset": "authors-code"}).cfg.M == 10
    assert built("grid", {"preset": "authors-code", "M": 4}).cfg.M == 4
    assert built("grid", {}).cfg.M == 10  # per_dataset off: the class default
    cfg = LBT.make_config({"preset": "authors-code"})
    assert LBT.for_family(cfg, "mixture2d", "grid").M == 15
    assert LBT.for_family(cfg, "mixture2d", "grid-veegan").M == 10


@pytest.mark.parametrize("second", [False, True])
@pytest.mark.parametrize("inside", [False, True])
def test_foreach_adam_step_is_the_loop_bit_for_bit(second, inside):
    """The unrolled Adam step runs as one `torch._foreach_*` call per operation for every
    parameter; its new parameters and moments, and the gradients an outer loss sends back
    through them to the parameters and the inner gradients, equal the per-parameter
    loop's bit for bit (float32, both moment treatments, both eps placements)."""
    from mcbench.methods.blocks import unroll as U

    g = torch.Generator().manual_seed(0)
    shapes = {"w": (5, 3), "b": (3,), "v": (2, 2, 2)}

    def leaves():
        return {k: torch.randn(s, generator=g).requires_grad_() for k, s in shapes.items()}

    p, grads = leaves(), leaves()
    state = AdamState(
        3,
        {k: torch.randn(s, generator=g) for k, s in shapes.items()},
        {k: torch.rand(s, generator=g) for k, s in shapes.items()},
        1e-3,
        (0.5, 0.999),
        1e-8,
    )
    outer = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    names = list(shapes)
    results = []
    for path in (U._adam_foreach, U._adam_loop):
        args = ([p[n] for n in names], [grads[n] for n in names], state, names)
        m, v, new = path(*args, 1 - 0.5**4, 1 - 0.999**4, second, inside)
        loss = sum(
            (x * outer[n]).sum() + (mi * outer[n]).sum()
            for n, x, mi in zip(names, new, m, strict=True)
        )
        back = torch.autograd.grad(loss, [*p.values(), *grads.values()])
        results.append([*m, *v, *new, *back])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    assert adam_step(p, grads, state, second, inside)[0]["w"].equal(results[0][2 * len(names)])
