"""mcbench.testing.check_method finds each way a method can break the contract.

TinyGAN below is a small correct method; each broken method is TinyGAN with one mistake
a plugin author could make. check_method must fail on the check that mistake breaks,
with a one-paragraph message naming the check and the method, and (where the mistake
leaves them intact) pass the other checks: a check that fires on everything would be
useless. None of these classes is registered: check_method registers each for the
duration of the call.
"""

from __future__ import annotations

import dataclasses
import random
import weakref
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mcbench.methods.gan import GAN
from mcbench.plugin.method import Method, Problem
from mcbench.plugin.registry import methods
from mcbench.testing import (
    CHECKS,
    ContractError,
    check_builds,
    check_checkpoint,
    check_determinism,
    check_finite_losses,
    check_method,
    check_no_global_rng,
    check_replicas,
    check_sample_shape,
    is_vectorized,
)

FUNCTIONS = {
    "builds": check_builds,
    "finite_losses": check_finite_losses,
    "sample_shape": check_sample_shape,
    "determinism": check_determinism,
    "global_rng": check_no_global_rng,
    "checkpoint": check_checkpoint,
    "replicas": check_replicas,
}


class TinyGAN(Method):
    """A correct GAN on the protocol's nets: seeded noise, per-seed means, sum backward."""

    name = "tiny-gan"
    vectorized = True

    def __init__(self, problem: Problem, cfg: Any) -> None:
        super().__init__(problem, cfg)
        self.G = problem.generator(problem.latent_dim)
        self.D = problem.critic()
        self.opt_g = problem.adam(self.G.parameters(), problem.lr_g)
        self.opt_d = problem.adam(self.D.parameters(), problem.lr_d)

    def noise(self, n: int) -> torch.Tensor:
        return self.randn(n)

    def losses(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.num_samples(real)
        fake = self.G(self.noise(n)).detach()
        loss_d = self.mean(F.softplus(-self.D(real))) + self.mean(F.softplus(self.D(fake)))
        self.minimize(self.opt_d, loss_d)
        loss_g = self.mean(F.softplus(-self.D(self.G(self.noise(n)))))
        self.minimize(self.opt_g, loss_g)
        return {"d": loss_d, "g": loss_g}

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.losses(real).items()}


# -- one mistake each ---------------------------------------------------------------------


class Unsaveable(TinyGAN):
    """Keeps a dict of running statistics: no checkpoint can hold it as it is."""

    name = "unsaveable"

    def __init__(self, problem, cfg):
        super().__init__(problem, cfg)
        self.stats: dict[str, float] = {}


class NaNLoss(TinyGAN):
    """Reports a NaN generator loss (as a log of 0 would)."""

    name = "nan-loss"
    vectorized = False

    def step(self, real):
        losses = super().step(real)
        return {**losses, "g": losses["g"] * float("nan")}


class NotDetached(TinyGAN):
    """Returns the losses with their autograd graphs."""

    name = "not-detached"
    vectorized = False

    def step(self, real):
        return self.losses(real)


class OffByOneSamples(TinyGAN):
    """`sample(n)` returns n - 1 samples."""

    name = "off-by-one-samples"
    vectorized = False

    def sample(self, n, rng=None):
        return super().sample(n, rng)[:-1]


class Unseeded(TinyGAN):
    """Draws its noise from a generator seeded from the clock/OS, not the harness."""

    name = "unseeded"
    vectorized = False

    def __init__(self, problem, cfg):
        super().__init__(problem, cfg)
        self.free = torch.Generator()
        self.free.seed()

    def noise(self, n):
        return torch.randn(n, self.problem.latent_dim, generator=self.free)


class GlobalDraw(TinyGAN):
    """Draws its noise from torch's global generator."""

    name = "global-draw"
    vectorized = False

    def noise(self, n):
        return torch.randn(n, self.problem.latent_dim)


class NumpyDraw(TinyGAN):
    """Smooths its labels by a factor drawn from numpy's global generator."""

    name = "numpy-draw"
    vectorized = False

    def step(self, real):
        losses = super().step(real)
        return {**losses, "d": losses["d"] * float(1 - 0.1 * np.random.rand())}


class WarmUp(TinyGAN):
    """A generator learning-rate warm-up over the first updates, driven by a counter."""

    name = "warm-up"

    def __init__(self, problem, cfg):
        super().__init__(problem, cfg)
        self.updates = 0

    def count(self) -> int:
        self.updates += 1
        return self.updates

    def step(self, real):
        for group in self.opt_g.param_groups:
            group["lr"] = self.problem.lr_g * min(1.0, self.count() / 4)
        return super().step(real)


class DroppedCounter(WarmUp):
    """WarmUp whose checkpoint leaves its counter out."""

    name = "dropped-counter"

    def extra_state(self):
        return {k: v for k, v in super().extra_state().items() if "updates" not in k}


_UPDATES: dict[int, int] = {}  # state outside the instance: no checkpoint can see it


class ModuleLevelState(WarmUp):
    """WarmUp that keeps its counter in a module-level dict."""

    name = "module-level-state"

    def __init__(self, problem, cfg):
        super().__init__(problem, cfg)
        _UPDATES[id(self)] = 0
        weakref.finalize(self, _UPDATES.pop, id(self), None)

    def count(self) -> int:
        _UPDATES[id(self)] += 1
        return _UPDATES[id(self)]


@dataclasses.dataclass
class History:
    values: list[float]


class UnloadableState(WarmUp):
    """Saves its counter inside an object that torch.load(weights_only=True) refuses."""

    name = "unloadable-state"

    def extra_state(self):
        out = {k: v for k, v in super().extra_state().items() if "updates" not in k}
        return {**out, "history": History([float(self.updates)])}

    def load_extra_state(self, state):
        state = dict(state)
        self.updates = int(state.pop("history").values[0])
        super().load_extra_state(state)


class MixedReplicas(TinyGAN):
    """Relativistic average GAN whose averages run over every replica (`.mean()`)."""

    name = "mixed-replicas"

    def losses(self, real):
        n = self.num_samples(real)
        d_real, d_fake = self.D(real), self.D(self.G(self.noise(n)).detach())
        loss_d = self.mean(F.softplus(-(d_real - d_fake.mean()))) + self.mean(
            F.softplus(d_fake - d_real.mean())
        )
        self.minimize(self.opt_d, loss_d)
        d_real, d_fake = self.D(real).detach(), self.D(self.G(self.noise(n)))
        loss_g = self.mean(F.softplus(-(d_fake - d_real.mean())))
        self.minimize(self.opt_g, loss_g)
        return {"d": loss_d, "g": loss_g}


class BatchFromDim0(TinyGAN):
    """Takes the batch size from dimension 0, which is the replica count with replicas."""

    name = "batch-from-dim0"

    def num_samples(self, x):
        return x.shape[0]


@dataclasses.dataclass(frozen=True)
class Case:
    cls: type[Method]
    check: str  # the check the mistake breaks
    says: str  # what the message must say
    also: frozenset[str] = frozenset()  # other checks the same mistake breaks


CASES = [
    Case(
        Unsaveable,
        "builds",
        "attribute 'stats' (dict) cannot be checkpointed",
        frozenset(CHECKS) - {"builds"},  # nothing else can run
    ),
    Case(NaNLoss, "finite_losses", "loss 'g' is nan", frozenset({"checkpoint"})),
    Case(NotDetached, "finite_losses", "loss 'd' is not detached"),
    Case(OffByOneSamples, "sample_shape", "has shape (12, 2), expected (13, 2)"),
    Case(Unseeded, "determinism", "two builds of seed 0 give different", frozenset({"checkpoint"})),
    Case(GlobalDraw, "global_rng", "update 1 (`step`) drew from torch's global generator"),
    Case(NumpyDraw, "global_rng", "drew from numpy's global generator"),
    Case(DroppedCounter, "checkpoint", "no state for attribute 'updates'"),
    Case(ModuleLevelState, "checkpoint", "the final samples differ"),
    Case(UnloadableState, "checkpoint", "did not resume from the checkpoint at step 2"),
    Case(MixedReplicas, "replicas", "at update 1 replica 0 (seed 0) has loss 'd'"),
    Case(BatchFromDim0, "replicas", "at update 1 replica 0 (seed 0) has loss"),
]


def test_a_correct_method_passes_every_check():
    report = check_method(TinyGAN)
    assert list(report.checks) == list(CHECKS) and not report.skipped
    assert report.cls is TinyGAN and report.method == "tiny-gan"
    assert report.checks["replicas"]["replicas"] == 3
    assert report.checks["checkpoint"]["resumed_at"] == 2
    assert all(title in str(report) for title in CHECKS.values())
    assert "tiny-gan" not in methods()  # registered only for the call


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.cls.name)
def test_each_mistake_fails_its_check_by_name(case: Case):
    with pytest.raises(ContractError) as caught:
        check_method(case.cls)
    err = caught.value
    msg = str(err)
    assert err.check == case.check, msg
    assert f"check '{CHECKS[case.check]}' failed for method '{case.cls.name}'" in msg
    assert case.cls.__qualname__ in msg and case.says in msg, msg
    assert "\n" not in msg  # one paragraph
    with pytest.raises(ContractError, match=CHECKS[case.check]):
        FUNCTIONS[case.check](case.cls, steps=2)  # the check on its own finds it too
    others = [k for k in CHECKS if k != case.check and k not in case.also]
    check_method(case.cls, checks=others, steps=2)  # and the mistake breaks nothing else


def test_checks_of_a_method_that_is_not_vectorized():
    report = check_method(GlobalDraw, checks=["sample_shape", "replicas"])
    assert not is_vectorized(GlobalDraw)
    assert list(report.checks) == ["sample_shape"]
    assert "vectorized = True" in report.skipped["replicas"]
    with pytest.raises(ContractError, match="vectorized = True"):
        check_replicas(GlobalDraw)


class ShadowsGAN(GAN):
    """Inherits the registered name "gan": must be checked as itself, not as GAN."""

    def sample(self, n, rng=None):
        return super().sample(n, rng)[:-1]


def test_a_class_that_inherits_a_registered_name_is_checked_as_itself():
    assert ShadowsGAN.name == "gan"
    with pytest.raises(ContractError, match="ShadowsGAN"):
        check_sample_shape(ShadowsGAN)
    assert methods()["gan"].cls is GAN
    assert not [n for n, e in methods().items() if e.cls is ShadowsGAN]


def test_registry_selectors_and_options():
    report = check_method("pacgan[m=3]", checks=["sample_shape"], steps=2)
    assert report.method == "pacgan[m=3]" and report.cls.name == "pacgan"
    with pytest.raises(ValueError, match="steps"):
        check_method(TinyGAN, steps=1)
    with pytest.raises(ValueError, match="unknown checks"):
        check_method(TinyGAN, checks=["speed"])
    with pytest.raises(TypeError):
        check_method(object)  # type: ignore[arg-type]


def test_the_callers_global_streams_are_left_as_they_were():
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    want = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    check_method(TinyGAN, checks=["global_rng"])
    assert torch.equal(torch.get_rng_state(), want[0])
    assert np.array_equal(np.random.get_state()[1], want[1]) and random.getstate() == want[2]


class Raises(TinyGAN):
    """A bug in `step` itself."""

    name = "raises"

    def step(self, real):
        raise RuntimeError("boom")


def test_an_exception_in_the_method_is_chained_to_the_failure():
    with pytest.raises(ContractError, match="update 1 of seed 0 raised RuntimeError: boom") as e:
        check_method(Raises)
    assert e.value.check == "finite_losses" and isinstance(e.value.__cause__, RuntimeError)
