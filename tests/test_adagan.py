"""AdaGAN: the data weights against a hand-solved example and an independent root
finder, the mixture weights against the beta rules' closed forms, the reweighting on two
clusters where the answer is known, sampling in proportion to the weights, and a
checkpoint resumed across a change of component. Small nets on the CPU, a few seconds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mcbench.errors import McbenchError
from mcbench.methods.adagan import AdaGAN, AdaGANConfig, data_weights, mixture_beta
from mcbench.plugin.method import Problem
from mcbench.plugin.protocol import PROTOCOLS
from mcbench.plugin.registry import resolve
from mcbench.testing import check_method, tiny_problem

A, B = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 0.0])  # two well-separated clusters


def two_clusters(seed: int = 0, batch: int = 128) -> Problem:
    """Half the data near A, half near B (std 0.1); nets of 32 units, a 2-d latent."""

    def real(n: int, g: torch.Generator) -> torch.Tensor:
        side = torch.rand(n, 1, generator=g) < 0.5
        return torch.where(side, A, B) + 0.1 * torch.randn(n, 2, generator=g)

    return tiny_problem((2,), 2, (32, 32), batch, seed, real=real)


def fixed(center: torch.Tensor, scale: float) -> nn.Linear:
    """A generator (2-d latent) of N(center, scale^2 I): what a component that covers
    one cluster exactly produces."""
    g = nn.Linear(2, 2)
    with torch.no_grad():
        g.weight.copy_(scale * torch.eye(2))
        g.bias.copy_(center)
    return g


# -- lambda* and the data weights -----------------------------------------------------------


def test_data_weights_solve_a_hand_example():
    # h = (0, 1, 2, 4), beta = 1/2, N = 4: sum_i (lam - h_i / 2)_+ = 2 has no root with
    # lam <= 1 (there it is 2 lam - 1/2 at most 3/2), and on [1, 2] it reads 3 lam - 3/2 = 2,
    # so lam* = 7/6 and W = (7/6, 2/3, 1/6, 0) / 2 = (7, 4, 1, 0) / 12.
    h = torch.tensor([2.0, 0.0, 4.0, 1.0])  # unsorted on purpose
    w, lam = data_weights(h, 0.5)
    assert float(lam) == pytest.approx(7 / 6, abs=1e-12)
    expected = torch.tensor([1.0, 7.0, 0.0, 4.0], dtype=torch.float64) / 12
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("beta", [0.05, 1 / 3, 0.5, 0.9])
def test_data_weights_match_a_bisection_root(beta):
    g = torch.Generator().manual_seed(1)
    h = torch.exp(2 * torch.randn(1000, generator=g, dtype=torch.float64))
    w, lam = data_weights(h, beta)
    n = h.numel()

    def total(x: float) -> float:  # sum of the unnormalised weights at lambda = x
        return float(((x - (1 - beta) * h).clamp_min(0) / (beta * n)).sum())

    lo, hi = 0.0, 1.0 + float(h.max())
    for _ in range(200):  # total() is increasing: plain bisection for total = 1
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) < 1 else (lo, mid)
    assert float(lam) == pytest.approx(lo, rel=1e-9)
    assert total(float(lam)) == pytest.approx(1.0, abs=1e-9)  # sums to one unnormalised
    assert (w >= 0).all() and float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    order = torch.argsort(h)
    assert (w[order].diff() <= 1e-15).all()  # a larger density ratio never weighs more
    assert (w == 0).any() == bool(lo < (1 - beta) * float(h.max()))


def test_equal_ratios_give_uniform_weights():
    # Every h_i = c: lam* = beta + (1 - beta) c and W_i = beta / (beta N) = 1 / N.
    for beta in (0.2, 0.5, 1.0):
        w, lam = data_weights(torch.full((7,), 3.0), beta)
        assert float(lam) == pytest.approx(beta + (1 - beta) * 3.0)
        torch.testing.assert_close(w, torch.full((7,), 1 / 7, dtype=torch.float64))


# -- mixture weights ------------------------------------------------------------------------


def test_beta_rules():
    assert [mixture_beta(t) for t in (1, 2, 3, 4)] == [1.0, 1 / 2, 1 / 3, 1 / 4]
    assert [mixture_beta(t, "constant", 0.3) for t in (1, 2, 5)] == [1.0, 0.3, 0.3]
    with pytest.raises(ValueError):
        mixture_beta(0)


@pytest.mark.parametrize("rule", ["uniform", "constant"])
def test_mixture_weights_after_every_stage(rule):
    """Through T = 4 components of 2 updates each and 3 updates more: after every update
    the weights are non-negative, sum to one and cover the components begun; at the end
    they are the rule's closed form (uniform: 1/4 each; constant beta:
    ((1-b)^3, b(1-b)^2, b(1-b), b))."""
    beta, T = 0.3, 4
    cfg = AdaGANConfig(
        T=T,
        steps_per_component=2,
        pool_size=256,
        classifier_epochs=0.5,
        beta_rule=rule,
        beta=beta,
    )
    problem = two_clusters(batch=64)
    m = AdaGAN(problem, cfg)
    for k in range(T * 2 + 3):
        m.step(problem.sample_real(64))
        w = m.G.weights
        assert (w >= 0).all() and float(w.sum()) == pytest.approx(1.0, abs=1e-12)
        begun = min(k // 2 + 1, T)
        assert m.stage == begun - 1 and int((w > 0).sum()) == begun
        dw = m.data_w
        assert (dw >= 0).all() and float(dw.sum()) == pytest.approx(1.0, abs=1e-12)
    if rule == "uniform":
        expected = [1 / T] * T
    else:
        expected = [(1 - beta) ** 3, beta * (1 - beta) ** 2, beta * (1 - beta), beta]
    torch.testing.assert_close(m.G.weights, torch.tensor(expected, dtype=torch.float64))


def test_reweighting_moves_the_data_onto_the_missed_cluster():
    """Component 1 covers cluster A exactly and nothing of B. The ideal classifier gives
    h = dP_model/dP_data = 2 on A and 0 on B; with beta_2 = 1/2 that is lambda* = 1, W = 0
    on A and 2/N on B: all the weight on B. The trained classifier must come close, and
    the mixture becomes 1/2 A-component + 1/2 new component."""
    cfg = AdaGANConfig(T=3, steps_per_component=1, pool_size=2000, classifier_epochs=20.0)
    m = AdaGAN(two_clusters(batch=256), cfg)
    m.G.components[0] = fixed(A, 0.1)
    m.next_stage()
    on_b = m.pool[:, 0] > 0
    assert 0.4 < float(on_b.double().mean()) < 0.6
    assert float(m.data_w[on_b].sum()) > 0.95
    torch.testing.assert_close(m.G.weights, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    drawn = m.pool_batch(4000)
    assert float((drawn[:, 0] > 0).double().mean()) > 0.9  # what component 2 trains on


# -- sampling -------------------------------------------------------------------------------


def test_sample_draws_components_in_proportion_to_the_weights():
    """Component k outputs the point (k, k); with weights (0.2, 0.5, 0.3, 0) each share
    of 20,000 samples is within 0.015 of its weight (more than 4 standard errors,
    sqrt(0.25 / 20,000) = 0.0035), and the untrained component is never drawn."""
    m = AdaGAN(two_clusters(), AdaGANConfig(T=4, pool_size=64))
    for k in range(4):
        m.G.components[k] = fixed(torch.tensor([float(k), float(k)]), 0.0)
    with torch.no_grad():
        m.G.weights.copy_(torch.tensor([0.2, 0.5, 0.3, 0.0]))
    x = m.sample(20_000, torch.Generator().manual_seed(7))
    assert x.shape == (20_000, 2)
    share = torch.bincount(x[:, 0].round().long(), minlength=4).double() / 20_000
    assert share[3] == 0
    torch.testing.assert_close(share, m.G.weights, rtol=0, atol=0.015)


def test_pool_batches_follow_the_data_weights():
    m = AdaGAN(two_clusters(), AdaGANConfig(T=2, pool_size=100))
    with torch.no_grad():
        m.data_w.zero_()
        m.data_w[3], m.data_w[7] = 0.25, 0.75
    x = m.pool_batch(8000)
    is3 = (x == m.pool[3]).all(1)
    assert bool((is3 | (x == m.pool[7]).all(1)).all())
    assert float(is3.double().mean()) == pytest.approx(0.25, abs=0.02)  # 4 std errors


# -- one update -----------------------------------------------------------------------------


def test_an_update_trains_only_its_component_and_later_ones_ignore_the_batch():
    problem = two_clusters(batch=64)
    cfg = AdaGANConfig(T=3, steps_per_component=1, pool_size=256)
    nan = torch.full((64, 2), float("nan"))
    assert torch.isnan(AdaGAN(problem, cfg).step(nan)["d"])  # component 1 uses the batch
    m = AdaGAN(problem, cfg)
    m.step(problem.sample_real(64))
    before = {k: v.clone() for k, v in {**m.G.state_dict(), **m.Ds.state_dict()}.items()}
    losses = m.step(nan)  # component 2: pool batches; the harness's batch is unused
    assert m.stage == 1 and all(torch.isfinite(v) for v in losses.values())
    after = {**m.G.state_dict(), **m.Ds.state_dict()}
    changed = {k for k in before if k != "weights" and not torch.equal(before[k], after[k])}
    owners = {k.split(".")[1] if k.startswith("components.") else k.split(".")[0] for k in changed}
    assert owners == {"1"}, changed  # G_2 (components.1) and D_2 (Ds index 1) only


def test_a_checkpoint_resumes_across_a_new_component():
    """5 updates, 2 per component: the run resumed at update 3 (midway through component
    2, after one reweighting) ends bit for bit as the uninterrupted one, through the
    next reweighting at update 5."""
    sel = "adagan[T=3,steps_per_component=2,pool_size=1000,classifier_epochs=0.5]"
    report = check_method(sel, steps=5, checks=["checkpoint"], eval_samples=64)
    assert report.checks["checkpoint"]["resumed_at"] == 3


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"beta_rule": "best"}, "beta_rule must be one of uniform, constant"),
        ({"beta": 0}, "beta must be in (0, 1]"),
        ({"beta": 1.5}, "beta must be in (0, 1]"),
        ({"T": 0}, "T must be > 0"),
        ({"steps_per_component": -1}, "steps_per_component must be >= 0"),
        ({"pool_size": 0}, "pool_size must be > 0"),
        ({"classifier_epochs": 0}, "classifier_epochs must be > 0"),
    ],
)
def test_bad_hyperparameters_are_refused(params, message):
    with pytest.raises(McbenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve("adagan", params)


def test_a_pool_beyond_memory_is_refused_before_any_work():
    entry, cfg = resolve("adagan", {"pool_size": 10**15})
    with pytest.raises(McbenchError, match="pool_size=1000000000000000 needs at least"):
        entry.cls.check_protocol(cfg, PROTOCOLS["mixture2d"])


def test_derived_steps_per_component():
    m = AdaGAN(two_clusters(batch=64), AdaGANConfig(T=2, pool_size=1000))
    assert m.steps_per_stage == math.ceil(15 * 1000 / 64)  # component_epochs x N / batch
    assert m.classifier_steps == math.ceil(5 * 1000 / 64)
