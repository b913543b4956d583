"""The one way to write a method: Method's helpers give each seed of a vectorised group
exactly what its own run gets, checkpoints hold everything a method holds (or refuse
it by name), and the in-tree methods use nothing else. Tiny float64 nets, CPU, seconds."""

from __future__ import annotations

import io
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from mcbench import McbenchError, Method, Problem
from mcbench.methods.blocks.nets import MLPFamily
from mcbench.plugin.registry import get_method, methods
from mcbench.plugin.replicas import replica_builder, replica_state

CPU = torch.device("cpu")
SEEDS = (0, 1, 2)
N = 6  # samples per batch
TIGHT = {"rtol": 1e-10, "atol": 1e-12}
ROOT = Path(__file__).resolve().parents[1]
METHODS_DIR = ROOT / "methods"


@pytest.fixture(autouse=True)
def _float64(float64):
    """Every test here runs in float64 (the shared fixture in conftest.py)."""


def problem(seeds: int | tuple[int, ...]) -> Problem:
    """One seed's problem (an int) or the vectorised group of several: replica r built
    and seeded exactly as the problem of seeds[r]."""
    fam = MLPFamily((2,), (5,), "tanh")
    one = isinstance(seeds, int)
    group = [seeds] if one else list(seeds)
    names = ("generator", "critic", "encoder", "mlp")
    if one:
        torch.manual_seed(100 + seeds)
        nets = {k: getattr(fam, k) for k in names}
    else:
        states = []
        for s in group:
            torch.manual_seed(100 + s)
            states.append(torch.get_rng_state())
        nets = {k: replica_builder(getattr(fam, k), states, CPU) for k in names}
    rngs = [torch.Generator().manual_seed(s) for s in group]
    return Problem(
        data_shape=(2,),
        latent_dim=3,
        device=CPU,
        rng=rngs[0] if one else rngs,
        lr_g=1e-2,
        lr_d=2e-2,
        betas=(0.5, 0.999),
        batch_size=N,
        replicas=None if one else len(group),
        **nets,
    )


# -- the helpers, one seed against R vectorised seeds -----------------------------------


def test_batch_helpers_give_each_seed_its_own_result():
    one, grp = Method(problem(0), None), Method(problem(SEEDS), None)
    x = torch.randn(len(SEEDS), 4 * N, 2)
    assert grp.num_samples(x) == one.num_samples(x[0]) == 4 * N
    for r in range(len(SEEDS)):
        assert torch.equal(grp.mean(x)[r], one.mean(x[r]))
        assert torch.equal(grp.sum(x)[r], one.sum(x[r]))
        assert torch.equal(grp.flatten(x.view(3, 4 * N, 2, 1))[r], one.flatten(x[r, :, :, None]))
        for got, want in zip(grp.split(x, 4), one.split(x[r], 4), strict=True):
            assert torch.equal(got[r], want)
    assert grp.mean(x).shape == grp.sum(x).shape == (len(SEEDS),)
    assert one.mean(x[0]).dim() == 0
    with pytest.raises(ValueError, match="equal batches"):
        one.split(x[0], 5)


@pytest.mark.parametrize("draw", ["randn", "rand"])
def test_draws_come_from_each_seeds_own_stream(draw):
    grp = Method(problem(SEEDS), None)
    got = [getattr(grp, draw)(N, 4), getattr(grp, draw)(2 * N, 3)]
    for r, s in enumerate(SEEDS):
        one = Method(problem(s), None)
        want = [getattr(one, draw)(N, 4), getattr(one, draw)(2 * N, 3)]
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g[r], w)
    assert grp.randn(N).shape == (len(SEEDS), N, 3)  # default size: the latent's
    before = [g.get_state() for g in grp.problem.rng]
    side = [torch.Generator().manual_seed(9 + s) for s in SEEDS]  # e.g. a diagnostics stream
    drawn = grp.randn(N, 2, rng=side)
    for r, s in enumerate(SEEDS):
        want = torch.randn(N, 2, generator=torch.Generator().manual_seed(9 + s))
        assert torch.equal(drawn[r], want)
    assert all(torch.equal(a, g.get_state()) for a, g in zip(before, grp.problem.rng, strict=True))


def net_loss(m: Method, net, x: torch.Tensor) -> torch.Tensor:
    return m.mean(net(x).square()) + 0.1 * m.mean(net(x))


def test_minimize_backward_grad_and_clipping_are_per_seed():
    """A helper-only update on replica nets gives every seed its own run's gradient,
    clipped by its own norm, and its own optimiser step."""
    x = torch.randn(len(SEEDS), N, 2)
    x[1] *= 100  # a huge gradient for seed 1 only: clipped, its neighbours not

    def update(m: Method, data: torch.Tensor):
        net = m.problem.critic()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        grads = m.grad(net_loss(m, net, data), net.parameters())
        m.backward(net_loss(m, net, data))
        m.clip_grad_norm_(net.parameters(), 1.0)
        clipped = [p.grad.clone() for p in net.parameters()]
        m.minimize(opt, net_loss(m, net, data))
        return grads, clipped, net

    grp = Method(problem(SEEDS), None)
    g_grads, g_clipped, g_net = update(grp, x)
    for r, s in enumerate(SEEDS):
        grads, clipped, net = update(Method(problem(s), None), x[r])
        for got, want in zip(g_grads, grads, strict=True):
            torch.testing.assert_close(got[r], want, **TIGHT)
        for got, want in zip(g_clipped, clipped, strict=True):
            torch.testing.assert_close(got[r], want, **TIGHT)
        for k, v in net.state_dict().items():
            torch.testing.assert_close(replica_state(g_net.state_dict(), r)[k], v, **TIGHT)


def test_minimize_steps_several_optimisers_on_one_loss():
    m = Method(problem(0), None)
    a, b = m.problem.critic(), m.problem.critic()
    opts = [torch.optim.SGD(n.parameters(), lr=0.1) for n in (a, b)]
    before = [p.detach().clone() for n in (a, b) for p in n.parameters()]
    x = torch.randn(N, 2)
    m.minimize(opts, m.mean(a(x) * b(x)), inputs=[*a.parameters(), *b.parameters()])
    after = [p.detach() for n in (a, b) for p in n.parameters()]
    assert all(not torch.equal(u, v) for u, v in zip(before, after, strict=True))


def test_readout_gives_floats_for_one_seed_and_per_seed_tensors_for_a_group():
    one, grp = Method(problem(0), None), Method(problem(SEEDS), None)
    assert one.readout({"a": torch.tensor(2.5)}) == {"a": 2.5}
    v = torch.arange(3.0)
    assert grp.readout({"a": v})["a"] is v


# -- a plugin written only with the helpers is correct as replicas ----------------------


class HelpersOnly(Method):
    """README's example in miniature: least-squares GAN losses, helpers only."""

    name = "helpers-only"
    vectorized = True

    def __init__(self, problem: Problem, cfg=None) -> None:
        super().__init__(problem, cfg)
        self.G = problem.generator(problem.latent_dim)
        self.D = problem.critic()
        self.opt_g = problem.adam(self.G.parameters(), problem.lr_g)
        self.opt_d = problem.adam(self.D.parameters(), problem.lr_d)

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.num_samples(real)
        first, second = self.split(self.G(self.randn(2 * n)).detach(), 2)
        loss_d = self.mean((self.D(real) - 1) ** 2) + self.mean(self.D(first) ** 2)
        loss_d = loss_d + self.mean(self.D(second) ** 2)
        self.minimize(self.opt_d, loss_d)
        loss_g = self.mean((self.D(self.G(self.randn(n))) - 1) ** 2)
        self.minimize(self.opt_g, loss_g)
        return {"d": loss_d.detach(), "g": loss_g.detach()}


def readme_method(monkeypatch) -> type[Method]:
    """The method class of README's "Add a method" example, as written there."""
    text = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- add-method-example -->\s*```python\n(.*?)```", text, re.S)
    assert code, "README lost its Add-a-method example"
    module = types.ModuleType("readme_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # for its dataclass
    exec(compile(code.group(1), "README.md:add-method-example", "exec"), module.__dict__)
    (cls,) = [v for v in vars(module).values() if isinstance(v, type) and v.__base__ is Method]
    return cls


@pytest.mark.parametrize("make", [lambda _: HelpersOnly, readme_method], ids=["tiny", "readme"])
def test_a_helpers_only_method_trains_as_its_sequential_runs(make, monkeypatch):
    cls = make(monkeypatch)
    assert cls.vectorized
    reals = [torch.randn(len(SEEDS), N, 2) for _ in range(3)]
    grp = cls(problem(SEEDS), cls.make_config())
    got = [grp.step(x) for x in reals]
    for r, s in enumerate(SEEDS):
        one = cls(problem(s), cls.make_config())
        want = [one.step(x[r]) for x in reals]
        for g, w in zip(got, want, strict=True):
            for k in w:
                torch.testing.assert_close(g[k][r], w[k], **TIGHT)
        for k, v in one.G.state_dict().items():
            torch.testing.assert_close(replica_state(grp.G.state_dict(), r)[k], v, **TIGHT)


def test_readme_example_keeps_the_method_contract(monkeypatch):
    """README's example, as written there, passes every check of `check_method`,
    replicas equal to sequential runs included."""
    from mcbench.testing import check_method

    report = check_method(readme_method(monkeypatch), steps=2, replicas=2)
    assert "replicas" in str(report)


# -- checkpoints: everything held, or refused by name ----------------------------------


class Holder(HelpersOnly):
    """A method holding every kind of state a checkpoint takes."""

    name = "holder"
    not_state = ("constant",)

    def __init__(self, problem: Problem, cfg=None) -> None:
        super().__init__(problem, cfg)
        self.history = [torch.zeros(2), torch.zeros(3)]  # a list of tensors
        self.pair = (torch.zeros(1), torch.zeros(1))
        self.ema = torch.zeros(4)
        self.calls = 0
        self.betas = (0.5, 0.9)
        self.mode = "warm"
        self.last = None
        self.side = problem.spawn_rng()
        self.constant = {"rebuilt": "at construction"}  # declared: not state

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = super().step(real)
        self.calls += 1
        self.history = [h + self.calls for h in self.history] + [losses["d"].reshape(1)]
        self.pair = (self.pair[0] + 1, self.pair[1] - 1)
        self.ema.add_(self.randn(1, 4, rng=self.side)[0])
        self.mode, self.last = "hot", 1.5
        return losses


def saved_and_loaded(obj):
    """Through torch.save and a weights-only load, as the harness's checkpoints go."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


def test_checkpoint_round_trip_holds_lists_of_tensors_streams_and_counters():
    m = Holder(problem(0))
    for _ in range(2):
        m.step(torch.randn(N, 2))
    assert m.check_state()["history"] == "tensors"
    state, extra = saved_and_loaded((m.state_dict(), m.extra_state()))
    assert not any("constant" in k for k in extra)
    fresh = Holder(problem(0))
    ema = fresh.ema
    fresh.load_state_dict(state)
    fresh.load_extra_state(extra)
    assert fresh.ema is ema  # copied into the method's own tensor
    for name in ("history", "pair", "ema", "calls", "betas", "mode", "last"):
        assert same(getattr(m, name), getattr(fresh, name)), name
    assert torch.equal(m.side.get_state(), fresh.side.get_state())
    real = torch.randn(N, 2)  # the same next step: nets, optimisers and streams agree
    fresh.problem.rng.set_state(m.problem.rng.get_state())  # the harness restores it
    want, got = m.step(real), fresh.step(real)
    assert all(torch.equal(v, got[k]) for k, v in want.items())
    assert same(m.history, fresh.history) and torch.equal(m.ema, fresh.ema)


def test_unsaveable_attributes_are_refused_by_name():
    class Cached(HelpersOnly):
        name = "cached"

        def __init__(self, problem: Problem, cfg=None) -> None:
            super().__init__(problem, cfg)
            self.cache = {}

    with pytest.raises(McbenchError, match=r"'cached': attribute 'cache' \(dict\).*not_state"):
        Cached(problem(0))  # refused once built, not at the first checkpoint
    m = HelpersOnly(problem(0))
    m.nets = [m.G, m.D]  # set later: refused when saved
    for save in (m.state_dict, m.extra_state):
        with pytest.raises(McbenchError, match=r"attribute 'nets' \(list\) cannot be"):
            save()


def test_a_checkpoint_missing_an_attribute_is_refused():
    m = Holder(problem(0))
    extra = m.extra_state()
    del extra["tensors.history"]
    with pytest.raises(McbenchError, match="no state for attribute 'history'"):
        Holder(problem(0)).load_extra_state(extra)


# -- the in-tree methods ----------------------------------------------------------------


def test_unroll_depth_is_declared():
    depth = {name: get_method(name).cls.depth_param for name in methods()}
    assert depth["unrolled-gan"] == depth["lbt"] == depth["lbt-gan"] == "K"
    assert depth["lbt-implicit"] is None and depth["gan"] is None
    for name, param in depth.items():
        if param is not None:
            assert hasattr(get_method(name).cls.make_config(), param), name


# In-tree methods whose seeds cannot train together, each with its reason (in its module
# docstring): AdaGAN's stage switch changes which nets an update touches, per seed.
NOT_VECTORIZED = {"adagan"}


def test_in_tree_methods_are_vectorized_and_written_with_the_helpers():
    serial = {name for name in methods() if not get_method(name).cls.vectorized}
    assert serial == NOT_VECTORIZED
    rules = re.compile(r"batch_dim|problem\.(mean|chunk|noise|clip_grad_norm_)|\.sum\(\)\.backward")
    for path in sorted(METHODS_DIR.rglob("*.py")):
        found = rules.search(path.read_text())
        assert found is None, f"{path.name} uses {found.group(0) if found else ''}"
