"""Training options of the harness that apply to every GAN-family method, not copies of
methods: instance noise on the critic's inputs, and the two time-scale update rule.

Instance noise (Arjovsky and Bottou, ICLR 2017, "Towards Principled Methods for Training
GANs", Section 4): real and generated samples alike reach the critic with Gaussian noise
added, x + sigma_t * eps, eps ~ N(0, I). The two noisy distributions overlap, so the
optimal critic is no longer perfect and its gradients stay informative (their Theorem
3.2 and the noise they add to both distributions). Less noise means a less blurred
objective, so the noise is annealed (as Sonderby et al., ICLR 2017, "Amortised MAP
Inference for Image Super-resolution", do with their instance noise). Our schedule:

    sigma_t = sigma_0 * max(0, 1 - (t - 1) / T)    for generator update t = 1, 2, ...

sigma_0 at the first update, then a straight line to 0, reached at update T + 1; T is
`noise_steps` (default: the run's length). Neither paper fixes a schedule that fits
every problem; a linear decay to zero is the simplest that ends on the unblurred
objective, and `noise_schedule = "constant"` keeps sigma_0 throughout. The level
advances once per generator update (the harness calls `Problem.begin_update(t)` before
each `step`), however often a method calls its critic within the update.

It applies to every critic a method builds through `problem.critic()`: the built net is
wrapped in `NoisyCritic`, which adds the noise in training mode only (a critic put in
eval mode sees clean inputs). Critics of (x, z) pairs (ALI/BiGAN, VEEGAN) get noise on x
only: the latent code is not data. The noise comes from a seeded stream of its own per
critic (one per replica, so that replica r draws exactly what its seed's sequential run
draws), never from the method's stream or the global ones, so turning it on shifts
nothing else; the stream is saved with the critic (its `get_extra_state`), so a resumed
run draws on where it stopped.

TTUR (Heusel et al., NIPS 2017, "GANs Trained by a Two Time-Scale Update Rule Converge
to a Local Nash Equilibrium"): the discriminator and the generator learn at rates of
their own. The protocol already has two rates (`Problem.lr_d`, `Problem.lr_g`); `lr_d`
and `lr_g` here override them for a run. lr_d is the rate of the discriminator side:
the critic's, and where a method has no critic, the net that plays its part (LBT's
density estimator). Heusel et al. pick the pair per experiment, so there is no default
pair; Zhang et al. (ICML 2019, SAGAN, Section 5) use lr_d = 4e-4, lr_g = 1e-4.

A run records these options in its config.json under "regularizers" and its key hashes
them, only where they are set (a run without them keeps the key it always had).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mcbench.errors import McbenchError, did_you_mean
from mcbench.plugin.method import Problem, Rng, is_rng

SCHEDULES = ("linear", "constant")


@dataclass(frozen=True)
class Regularizers:
    """A run's harness-level training options; the defaults change nothing."""

    instance_noise: float = 0.0  # sigma_0, std of the critic's input noise; 0: none
    noise_schedule: str = "linear"  # "linear": sigma_0 -> 0 over noise_steps; "constant"
    noise_steps: int | None = None  # T of the linear schedule; None: the run's steps
    lr_d: float | None = None  # the discriminator side's Adam rate; None: the protocol's
    lr_g: float | None = None  # the generator's Adam rate; None: the protocol's

    def __post_init__(self) -> None:
        self.validate()

    @property
    def noisy(self) -> bool:
        return self.instance_noise > 0

    def validate(self) -> None:
        """One-line McbenchError for a value no run can use."""
        for name in ("instance_noise", "lr_d", "lr_g"):
            v = getattr(self, name)
            if v is None and name != "instance_noise":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise McbenchError(f"{name} must be a finite number, got {v!r}")
            if name != "instance_noise" and not v > 0:
                raise McbenchError(f"{name} must be > 0, got {v!r}")
        if self.instance_noise < 0:
            raise McbenchError(f"instance_noise must be >= 0, got {self.instance_noise!r}")
        if self.noise_schedule not in SCHEDULES:
            raise McbenchError(
                f"noise_schedule must be one of {', '.join(SCHEDULES)}, "
                f"got {self.noise_schedule!r}{did_you_mean(self.noise_schedule, SCHEDULES)}"
            )
        n = self.noise_steps
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise McbenchError(f"noise_steps must be a positive integer, got {n!r}")

    @classmethod
    def from_options(cls, values: Mapping[str, Any], where: str = "regularizers") -> Regularizers:
        """From a suite's [regularizers] table, command-line options or a config.json
        record; unknown names and invalid values are one-line McbenchErrors."""
        if not isinstance(values, Mapping):
            raise McbenchError(f"{where} must be a table of options, got {values!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                raise McbenchError(
                    f"{where}: unknown option {key!r}{did_you_mean(key, names)}; "
                    f"valid: {', '.join(names)}"
                )
        out = dict(values)
        for key in ("instance_noise", "lr_d", "lr_g"):  # TOML 0 or 1 is an int
            v = out.get(key)
            if isinstance(v, int) and not isinstance(v, bool):
                out[key] = float(v)
        try:
            return cls(**out)
        except McbenchError as exc:
            raise McbenchError(f"{where}: {exc}") from None

    def steps_of(self, run_steps: int) -> int:
        """T of the linear schedule for a run of `run_steps` updates."""
        return self.noise_steps if self.noise_steps is not None else run_steps

    def record(self, run_steps: int, lr_d: float, lr_g: float) -> dict[str, Any]:
        """What config.json records and the run key hashes: only what is set, resolved
        (T as a number), an override equal to the protocol's rate (`lr_d`, `lr_g`) left
        out, as such a run is the plain run. Empty for the defaults."""
        out: dict[str, Any] = {}
        if self.noisy:
            out["instance_noise"] = float(self.instance_noise)
            out["noise_schedule"] = self.noise_schedule
            if self.noise_schedule == "linear":
                out["noise_steps"] = self.steps_of(run_steps)
        if self.lr_d is not None and self.lr_d != lr_d:
            out["lr_d"] = float(self.lr_d)
        if self.lr_g is not None and self.lr_g != lr_g:
            out["lr_g"] = float(self.lr_g)
        return out

    def describe(self) -> str:
        """A short label for logs and reports, e.g. 'noise 0.1 linear/2000, lr_d 0.0004'."""
        parts = []
        if self.noisy:
            how = self.noise_schedule
            if how == "linear" and self.noise_steps is not None:
                how += f"/{self.noise_steps}"
            parts.append(f"noise {self.instance_noise:g} {how}")
        parts += [f"{k} {getattr(self, k):g}" for k in ("lr_d", "lr_g") if getattr(self, k)]
        return ", ".join(parts) or "none"


def noise_level(sigma0: float, schedule: str, steps: int, t: int) -> float:
    """sigma_t of generator update t (1, 2, ...): sigma0 throughout ("constant"), or
    sigma0 * max(0, 1 - (t - 1) / steps) ("linear")."""
    if schedule == "constant":
        return float(sigma0)
    return float(sigma0) * max(0.0, 1.0 - (t - 1) / steps)


def _child(g: torch.Generator) -> torch.Generator:
    seed = int(torch.randint(2**62, (1,), generator=g, device=g.device))
    return torch.Generator(g.device).manual_seed(seed)


class NoisyCritic(nn.Module):
    """A critic whose data input gets Gaussian noise of std `sigma` in training mode.

    `rng` is one stream (one seed) or one per replica (inputs (R, n, ...)); replica r's
    noise is drawn from stream r exactly as its sequential run draws it. `sigma` is a
    buffer the harness sets before each generator update, so a captured update reads
    the current level. The streams' states are the module's extra state: saved and
    restored with its state_dict (a torch.Generator attribute would not be).
    """

    def __init__(self, net: nn.Module, rng: Rng, sigma: float) -> None:
        super().__init__()
        if not is_rng(rng):
            raise TypeError("NoisyCritic needs a torch.Generator or a list of them")
        self.net = net
        self.rng = rng
        self.register_buffer("sigma", torch.tensor(float(sigma)))

    @property
    def replicas(self) -> bool:
        return isinstance(self.rng, list)

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like `like`, from the critic's own stream(s)."""
        if self.replicas:
            if like.shape[0] != len(self.rng):
                raise ValueError(f"{len(self.rng)} replica streams for input {tuple(like.shape)}")
            return torch.stack(
                [
                    torch.randn(like.shape[1:], generator=g, device=like.device, dtype=like.dtype)
                    for g in self.rng
                ]
            )
        return torch.randn(like.shape, generator=self.rng, device=like.device, dtype=like.dtype)

    def forward(self, x: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = x + self.sigma.to(x.dtype) * self.noise(x)
        return self.net(x, *extra)

    def generators(self) -> list[torch.Generator]:
        """The streams it draws from (what a CUDA graph capture must register)."""
        return list(self.rng) if self.replicas else [self.rng]

    def get_extra_state(self) -> torch.Tensor:
        states = [g.get_state() for g in self.generators()]
        return torch.stack(states) if self.replicas else states[0]

    def set_extra_state(self, state: torch.Tensor) -> None:
        state = state.to("cpu")
        if self.replicas:
            for g, st in zip(self.rng, state, strict=True):
                g.set_state(st.clone())
        else:
            self.rng.set_state(state.clone())


class InstanceNoise:
    """The run's instance noise: wraps each critic the method builds (`wrap`) and sets
    their noise level before each generator update (`begin_update`, called by the
    harness through `Problem.begin_update`)."""

    def __init__(
        self, sigma0: float, schedule: str, steps: int, rng: Rng, device: torch.device
    ) -> None:
        self.sigma0, self.schedule, self.steps = float(sigma0), schedule, int(steps)
        self.rng, self.device = rng, device  # `rng` seeds each critic's own stream
        self.critics: list[NoisyCritic] = []

    def level(self, t: int) -> float:
        return noise_level(self.sigma0, self.schedule, self.steps, t)

    def wrap(self, build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        """`problem.critic` with every net it builds wrapped in a NoisyCritic."""

        def critic(*args: Any, **kwargs: Any) -> nn.Module:
            net = build(*args, **kwargs)
            rng = [_child(g) for g in self.rng] if isinstance(self.rng, list) else _child(self.rng)
            wrapped = NoisyCritic(net, rng, self.level(1)).to(self.device)
            self.critics.append(wrapped)
            return wrapped

        return critic

    def begin_update(self, t: int) -> None:
        sigma = self.level(t)
        for c in self.critics:
            c.sigma.fill_(sigma)


def apply(problem: Problem, regs: Regularizers, run_steps: int, noise_rng: Rng | None) -> Problem:
    """`problem` with the run's options applied: the overridden learning rates and, with
    instance noise, critics that add it (seeded from `noise_rng`, one per replica)."""
    changes: dict[str, Any] = {}
    if regs.lr_d is not None:
        changes["lr_d"] = float(regs.lr_d)
    if regs.lr_g is not None:
        changes["lr_g"] = float(regs.lr_g)
    if regs.noisy:
        if noise_rng is None:
            raise ValueError("instance noise needs a seeded stream")
        noise = InstanceNoise(
            regs.instance_noise,
            regs.noise_schedule,
            regs.steps_of(run_steps),
            noise_rng,
            problem.device,
        )
        changes["critic"] = noise.wrap(problem.critic)
        changes["instance_noise"] = noise
    return dataclasses.replace(problem, **changes) if changes else problem


def check_applied(problem: Problem, method_name: str) -> None:
    """After the method is built: instance noise needs a critic built through
    `problem.critic()`, or it would silently do nothing."""
    noise = problem.instance_noise
    if noise is not None and not noise.critics:
        raise McbenchError(
            f"method {method_name!r} builds no critic through problem.critic(): instance "
            "noise has nothing to act on (leave the method out or the noise off)"
        )
