"""The method interface: what a method gets from the harness and what it must offer.

A method owns its whole update (`step`) because methods train different sets of nets
(a look-ahead discriminator, a reconstructor, an estimator). Devices, seeds, timing,
evaluation, logging and checkpoints belong to the harness, never to a method.

One way to write a method: batch-level work goes through the helpers on `Method`
(`num_samples`, `mean`, `split`, `randn`, `minimize`, ...), so the same code trains one
seed or R seeds at once as vectorised replicas (`mcbench.plugin.replicas`), where every
tensor carries a leading seed dimension the method never has to name.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from mcbench.errors import McbenchError, did_you_mean
from mcbench.plugin import replicas as rep

Rng = torch.Generator | list[torch.Generator]


def is_rng(x: Any) -> bool:
    """A stream (one seed) or a non-empty list of streams (one a replica)."""
    if isinstance(x, list):
        return bool(x) and all(isinstance(g, torch.Generator) for g in x)
    return isinstance(x, torch.Generator)


def rng_state(rng: Rng) -> Any:
    """The state of a stream, or of each replica's stream (for checkpoints)."""
    return [g.get_state() for g in rng] if isinstance(rng, list) else rng.get_state()


def set_rng_state(rng: Rng, state: Any) -> None:
    if isinstance(rng, list):
        for g, st in zip(rng, state, strict=True):
            g.set_state(st)
    else:
        rng.set_state(state)


def draw(
    sampler: Callable[..., torch.Tensor], rng: Rng, n: int, d: int, device: torch.device
) -> torch.Tensor:
    """(n, d) draws of `sampler` (torch.randn, torch.rand) from one stream, or (R, n, d)
    with replica r drawn from its own stream, exactly as its sequential run draws."""
    if isinstance(rng, list):
        return torch.stack([sampler(n, d, generator=g, device=device) for g in rng])
    return sampler(n, d, generator=rng, device=device)


@dataclass
class Problem:
    """Everything the common protocol hands to a method.

    Network builders come from the protocol so every method is compared with the same
    architectures; `rng` is the method's own seeded stream for noise.
    """

    data_shape: tuple[int, ...]
    latent_dim: int
    device: torch.device
    rng: Rng
    lr_g: float
    lr_d: float
    betas: tuple[float, float]
    batch_size: int
    # Builders: generator(latent_dim) -> G; critic(in_shape=None, out_dim=1,
    # extra_dim=0) -> D-like net, called net(x) or net(x, extra) when extra_dim > 0;
    # encoder(in_shape=None, out_dim) -> net mapping data to a vector;
    # mlp(in_dim, out_dim, hidden=None) -> MLP with the protocol's activation.
    generator: Callable[..., nn.Module]
    critic: Callable[..., nn.Module]
    encoder: Callable[..., nn.Module]
    mlp: Callable[..., nn.Module]
    # Hidden widths of explicit density estimators (LBT's VAE): 2-D nets use the
    # protocol's MLP widths; images use the paper's 1000-400 MLP.
    estimator_hidden: tuple[int, ...] = (128, 128)
    sample_real: Callable[[int], torch.Tensor] = field(repr=False, default=None)  # type: ignore[assignment]
    family: str = "mixture2d"
    # The dataset's registry name (ring, grid, ...): for a method that follows its paper's
    # code per dataset where one family holds several (LBT's grid settings). "": unknown.
    dataset: str = ""
    # None: one seed, tensors (n, ...). R: R seeds trained together (mcbench.plugin.replicas),
    # `rng` a list of R generators, nets and tensors with a leading dimension R. Methods
    # never branch on it: the Method helpers do.
    replicas: int | None = None
    # Optimisers keep their step on the device, so a whole update can be captured as a
    # CUDA graph (mcbench.run.graphs); off by default (it is slower eagerly).
    capturable: bool = False
    # The run's instance noise (mcbench.plugin.regularizers.InstanceNoise; not imported
    # here: it imports this module), which `critic` then wraps every critic in; None:
    # none. Methods never read it: the harness advances it through `begin_update`.
    instance_noise: Any = field(default=None, repr=False)

    @property
    def data_dim(self) -> int:
        n = 1
        for s in self.data_shape:
            n *= s
        return n

    @property
    def batch_dim(self) -> int:
        """The samples' dimension: 0 for one seed, 1 with replicas (0 is the replica)."""
        return 0 if self.replicas is None else 1

    def begin_update(self, step: int) -> None:
        """Called by the harness before generator update `step` (1, 2, ...): what
        advances once per generator update, not per critic call (the instance-noise
        level), advances here. A loop that calls `step` itself should call this too,
        or the noise stays at its first update's level."""
        if self.instance_noise is not None:
            self.instance_noise.begin_update(step)

    def noise(self, n: int, dim: int | None = None, rng: Rng | None = None) -> torch.Tensor:
        """Standard normal codes from the method's seeded stream (or from `rng`): (n, d),
        or (R, n, d) with replica r drawn from its own stream. Methods call
        `Method.randn`; this is for the harness."""
        d = self.latent_dim if dim is None else dim
        return draw(torch.randn, self.rng if rng is None else rng, n, d, self.device)

    def spawn_rng(self) -> Rng:
        """A new stream seeded from the method's (one per replica), e.g. for diagnostics
        that must not shift the training noise."""

        def child(g: torch.Generator) -> torch.Generator:
            seed = int(torch.randint(2**62, (1,), generator=g, device=self.device))
            return torch.Generator(self.device).manual_seed(seed)

        return [child(g) for g in self.rng] if isinstance(self.rng, list) else child(self.rng)

    def adam(self, params, lr: float, betas: tuple[float, float] | None = None):
        """The protocol's optimiser, so methods never pick their own by accident.

        Not torch's fused Adam, though it is 6-8% faster on a CPU update: in torch 2.13's
        CPU build it reads a non-contiguous gradient as if it were contiguous (a method
        that assigns `p.grad` from `torch.autograd.grad`, e.g. a transposed replica weight,
        gets a wrong step: 0.002 off after one step at lr 1e-3; tested)."""
        betas = betas or self.betas
        if self.capturable:
            return torch.optim.Adam(params, lr=lr, betas=betas, capturable=True)
        return torch.optim.Adam(params, lr=lr, betas=betas)


# -- what a checkpoint holds ----------------------------------------------------------

PLAIN = (bool, int, float, str, type(None))
NOT_STATE = ("problem", "cfg")  # given to the constructor, never saved


def state_kind(value: Any) -> str | None:
    """How a checkpoint saves an attribute's value, or None where it cannot."""
    if isinstance(value, nn.Module):
        return "module"
    if isinstance(value, torch.optim.Optimizer):
        return "optim"
    if is_rng(value):
        return "rng"
    if isinstance(value, torch.Tensor):
        return "tensor"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, torch.Tensor) for v in value):
            return "tensors"
        return "value" if all(isinstance(v, PLAIN) for v in value) else None
    return "value" if isinstance(value, PLAIN) else None


class _Checked(type):
    """Method's metaclass: a method is checked once it is built, so an attribute no
    checkpoint can hold is refused at construction, not at the first checkpoint."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        method = super().__call__(*args, **kwargs)
        method.check_state()
        return method


@dataclass(frozen=True)
class FunctionalUpdate:
    """A method's update as a pure function, for the harness to compile.

    `update(params, moments, real, noise) -> (params, moments, losses)`: `params` maps
    each net's attribute name (as `Method.modules()` names it) to its parameters by
    name; `moments` maps each Adam's attribute name (`Method.optimizers()`) to
    {"step": tensor, "exp_avg": params-like, "exp_avg_sq": params-like} over its net's
    parameters; `losses` are what `step` returns. `noise(n)` draws the update's random
    numbers from the method's streams in the order `step` draws them, so a compiled run
    leaves every stream where the eager run would (checkpoints and resume unchanged).
    `optimized` maps each optimiser to the net it steps.
    """

    update: Callable[..., tuple[dict, dict, dict[str, torch.Tensor]]]
    noise: Callable[[int], list[torch.Tensor]]
    optimized: dict[str, str]


def no_functional_update(name: str) -> McbenchError:
    """The refusal of `--compile` for a method without a functional update."""
    return McbenchError(
        f"method {name!r} has no functional update, so it cannot run with --compile "
        "(`mcbench list` marks the methods that can)"
    )


def compilable(cls: type) -> bool:
    """Whether `--compile` can train the method class: it defines its own update as a
    pure function (a subclass that changes `step` resets `functional_update`)."""
    return getattr(cls, "functional_update", None) is not Method.functional_update


class Method(metaclass=_Checked):
    """Base class of every method plugin.

    Subclasses set `name`, a `Config` dataclass of hyperparameters (paper defaults) and
    implement `step(real) -> losses` (one generator update, inner loops included) and
    `sample(n)`. `presets` maps a preset name to config overrides; `aliases` maps an
    extra registry name (e.g. ``pacgan2``) to overrides.

    Batch-level work goes through the helpers below (`num_samples`, `mean`, `sum`,
    `split`, `flatten`, `randn`, `rand`, `minimize`, `backward`, `grad`,
    `clip_grad_norm_`, `readout`); per-sample work (features) counts dimensions from the
    end. A method written so is correct for one seed and for R vectorised seeds alike.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = None  # type: ignore[assignment]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    aliases: ClassVar[dict[str, dict[str, Any]]] = {}
    # Where the defaults come from, shown in README's method table.
    defaults_from: ClassVar[str] = ""
    # True: the harness may train several seeds of this class together (vectorised
    # replicas). Safe for a `step` that handles batches only through the helpers.
    vectorized: ClassVar[bool] = False
    # The Config field that sets the unroll depth (e.g. "K"), for the depth study;
    # None: the method has no unroll depth.
    depth_param: ClassVar[str | None] = None
    # Attributes that are not training state (constants construction rebuilds, e.g. a
    # fixed evaluation batch): checkpoints neither save nor check them.
    not_state: ClassVar[tuple[str, ...]] = ()

    def __init__(self, problem: Problem, config: Any) -> None:
        self.problem = problem
        self.cfg = config

    @classmethod
    def check_protocol(cls, config: Any, protocol: Any) -> None:
        """Refuse (McbenchError) a config that `protocol` (a `plugin.protocol.Protocol`;
        not imported here: protocol imports this module) cannot train, such as a pack
        larger than the batch: run planning calls this before any work starts, so the
        mistake is not found mid-suite. Default: every config fits."""

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """One generator update on a real batch; returns detached per-seed losses (scalars
        for one seed, (R,) with replicas: what `mean` gives)."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, rng: Rng | None = None) -> torch.Tensor:
        """n generated samples (generator in eval mode); `rng` keeps evaluation from
        consuming the training noise stream."""
        g = self.generator_module()
        was_training = g.training
        g.eval()
        out = g(self.randn(n, rng=rng))
        g.train(was_training)
        return out

    def functional_update(self) -> FunctionalUpdate:
        """This method's update as one pure function, which `mcbench run --compile`
        compiles whole (mcbench.run.compiled); a method that defines it keeps `step` as
        the reference the two are tested against. Default: none, refused here."""
        raise no_functional_update(self.name)

    def diagnostics(self) -> dict[str, float | torch.Tensor]:
        """Extra curves recorded at each evaluation (e.g. LBT's ELBO on generated and
        real data), passed through `readout`. Called by the harness outside the timed
        step; default none."""
        return {}

    def generator_module(self) -> nn.Module:
        """The net whose samples are evaluated; saved as the run's final generator."""
        return self.G  # type: ignore[attr-defined]

    # -- batches: the same code for one seed and for R vectorised seeds ---------------

    @property
    def _replicas(self) -> bool:
        return self.problem.replicas is not None

    def num_samples(self, x: torch.Tensor) -> int:
        """Samples in a batch (each seed's; every seed has as many)."""
        return x.shape[self.problem.batch_dim]

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """Each seed's mean over its samples and every per-sample dimension: a scalar for
        one seed, (R,) with replicas. Losses built from it keep every seed's gradient its
        own, since `minimize` differentiates their sum."""
        return x.reshape(x.shape[0], -1).mean(1) if self._replicas else x.mean()

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Each seed's sum over every other dimension (also of parameter-shaped tensors,
        whose replica form leads with the seed): a scalar, or (R,) with replicas."""
        return rep.per_replica_sum(x) if self._replicas else x.sum()

    def split(self, x: torch.Tensor, k: int) -> list[torch.Tensor]:
        """k equal batches along the sample dimension (e.g. one draw for k inner steps)."""
        n = self.num_samples(x)
        if n % k:
            raise ValueError(f"cannot split {n} samples into {k} equal batches")
        return list(x.chunk(k, dim=self.problem.batch_dim))

    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        """Every sample as a flat vector: (n, D), or (R, n, D) with replicas."""
        return x.flatten(self.problem.batch_dim + 1)

    def randn(self, n: int, dim: int | None = None, rng: Rng | None = None) -> torch.Tensor:
        """n standard normal vectors of size `dim` (default: the latent size) from the
        method's seeded stream, or from `rng` (e.g. a `problem.spawn_rng()` stream):
        (n, dim), or (R, n, dim) with each seed drawing from its own stream."""
        return self.problem.noise(n, dim, rng)

    def rand(self, n: int, dim: int, rng: Rng | None = None) -> torch.Tensor:
        """As `randn`, uniform on [0, 1)."""
        p = self.problem
        return draw(torch.rand, p.rng if rng is None else rng, n, dim, p.device)

    def backward(self, loss: torch.Tensor, inputs: Sequence[torch.Tensor] | None = None) -> None:
        """Accumulate every seed's gradient of its own loss into `.grad` (of `inputs`
        only, if given): the sum's gradient, as seeds share no parameters."""
        loss.sum().backward(inputs=inputs)

    def minimize(
        self,
        opt: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        loss: torch.Tensor,
        inputs: Sequence[torch.Tensor] | None = None,
    ) -> None:
        """One descent step of the optimiser(s) on `loss`: zero their gradients, then
        `backward(loss, inputs)`, then step each in order."""
        opts = [opt] if isinstance(opt, torch.optim.Optimizer) else list(opt)
        for o in opts:
            o.zero_grad(set_to_none=True)
        self.backward(loss, inputs)
        for o in opts:
            o.step()

    def grad(
        self, loss: torch.Tensor, inputs: Sequence[torch.Tensor], create_graph: bool = False
    ) -> list[torch.Tensor]:
        """Every seed's gradient of its own loss w.r.t. `inputs`, returned (not stored)."""
        return list(torch.autograd.grad(loss.sum(), list(inputs), create_graph=create_graph))

    def clip_grad_norm_(self, params: Iterable[nn.Parameter], max_norm: float) -> None:
        """Global-norm gradient clipping, each seed's gradients by their own norm."""
        if self._replicas:
            rep.clip_grad_norm_(params, max_norm)
        else:
            torch.nn.utils.clip_grad_norm_(params, max_norm)

    def readout(self, values: Mapping[str, torch.Tensor]) -> dict[str, float | torch.Tensor]:
        """Per-seed values as `diagnostics` returns them: floats for one seed, the (R,)
        tensors themselves with replicas (the harness reads each replica's)."""
        if self._replicas:
            return dict(values)
        return {k: float(v) for k, v in values.items()}

    # -- checkpoints: everything a method holds, or a refusal -------------------------

    def _skipped(self) -> set[str]:
        return {*NOT_STATE, *self.not_state}

    def _held(self) -> list[tuple[str, str, Any]]:
        """(attribute, kind, value) of every attribute a checkpoint holds."""
        out = []
        skip = self._skipped()
        for name, value in vars(self).items():
            if name in skip:
                continue
            kind = state_kind(value)
            if kind is None:
                raise McbenchError(
                    f"method {self.name!r}: attribute {name!r} ({type(value).__name__}) "
                    "cannot be checkpointed; hold training state as nets, optimisers, "
                    "torch.Generators, tensors, lists of tensors or plain numbers and "
                    f"strings, or declare it `not_state = ({name!r},)` if construction "
                    "rebuilds it"
                )
            out.append((name, kind, value))
        return out

    def check_state(self) -> dict[str, str]:
        """attribute -> how a checkpoint saves it; McbenchError naming an attribute it
        cannot save. The harness calls it once the method is built."""
        return {name: kind for name, kind, _ in self._held()}

    def modules(self) -> dict[str, nn.Module]:
        return {name: v for name, kind, v in self._held() if kind == "module"}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {name: v for name, kind, v in self._held() if kind == "optim"}

    def state_dict(self) -> dict[str, Any]:
        """The method's nets and optimisers (everything else: `extra_state`)."""
        return {
            f"{kind}.{name}": value.state_dict()
            for name, kind, value in self._held()
            if kind in ("module", "optim")
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, kind, value in self._held():
            if kind in ("module", "optim"):
                if f"{kind}.{name}" not in state:
                    raise self._missing(name)
                value.load_state_dict(state[f"{kind}.{name}"])

    def extra_state(self) -> dict[str, Any]:
        """Everything else the method holds: its own streams, tensors, lists of tensors
        and plain values (counters, step sizes)."""
        out: dict[str, Any] = {}
        for name, kind, value in self._held():
            if kind == "rng":
                out[f"rng.{name}"] = rng_state(value)
            elif kind == "tensor":
                out[f"tensor.{name}"] = value.detach().clone()
            elif kind == "tensors":
                out[f"tensors.{name}"] = [t.detach().clone() for t in value]
            elif kind == "value":
                out[f"value.{name}"] = copy.copy(value)
        return out

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore `extra_state()`. Tensors are copied into the method's own where shapes
        agree, so whatever refers to them (a captured CUDA graph) stays valid."""
        saved: dict[str, tuple[str, Any]] = {}
        for key, value in state.items():
            kind, name = key.split(".", 1)
            saved[name] = ("value" if kind == "number" else kind, value)  # older files
        for name, kind, _ in self._held():
            if kind not in ("module", "optim") and name not in saved:
                raise self._missing(name)
        skip = self._skipped()
        for name, (kind, value) in saved.items():
            if name in skip:  # declared not state since the checkpoint was written
                continue
            current = getattr(self, name, None)
            if kind == "rng":
                set_rng_state(current, value)
            elif kind == "tensor":
                setattr(self, name, self._into(current, value))
            elif kind == "tensors":
                if isinstance(current, (list, tuple)) and len(current) == len(value):
                    parts = (self._into(c, v) for c, v in zip(current, value, strict=True))
                    setattr(self, name, type(current)(parts))
                else:
                    setattr(self, name, [self._into(None, v) for v in value])
            else:
                setattr(self, name, value)

    def _into(self, current: Any, saved: torch.Tensor) -> torch.Tensor:
        """`saved` copied into `current` if it is a tensor of its shape and dtype, else
        `saved` on the method's device (or `current`'s)."""
        if not isinstance(current, torch.Tensor):
            return saved.to(self.problem.device)
        if current.shape == saved.shape and current.dtype == saved.dtype:
            with torch.no_grad():
                current.copy_(saved)
            return current
        return saved.to(current.device)

    def _missing(self, name: str) -> McbenchError:
        return McbenchError(
            f"method {self.name!r}: the checkpoint holds no state for attribute {name!r}"
        )

    # -- configuration -------------------------------------------------------------

    @classmethod
    def make_config(cls, overrides: Mapping[str, Any] | None = None) -> Any:
        """Build the Config from defaults, an optional `preset`, then overrides.

        Values are coerced to the field's declared type so that CLI strings work.
        """
        if cls.Config is None:
            return None
        overrides = dict(overrides or {})
        preset = overrides.pop("preset", None)
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in cls.presets:
                raise McbenchError(
                    f"method {cls.name!r} has no preset {preset!r}"
                    f"{did_you_mean(preset, cls.presets)}; "
                    f"choices: {', '.join(sorted(cls.presets)) or 'none'}"
                )
            values.update(cls.presets[preset])
        values.update(overrides)
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        for key in values:
            if key not in fields:
                raise McbenchError(
                    f"method {cls.name!r} has no hyperparameter {key!r}"
                    f"{did_you_mean(key, fields)}; "
                    f"choices: {', '.join(fields)}"
                )
        defaults = cls.Config()
        coerced = {k: _coerce(cls.name, k, v, getattr(defaults, k)) for k, v in values.items()}
        cfg = dataclasses.replace(defaults, **coerced)
        check = getattr(cfg, "validate", None)
        if check is not None:
            check()
        return cfg


def _coerce(method: str, key: str, value: Any, default: Any) -> Any:
    if default is None or (isinstance(value, type(default)) and not isinstance(value, bool)):
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes"):
                    return True
                if value.lower() in ("0", "false", "no"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = [float(v) for v in value.strip("()[]").split(",")]
            return tuple(type(d)(v) for d, v in zip(default, value, strict=True))
        return type(default)(value)
    except (TypeError, ValueError):
        raise McbenchError(
            f"method {method!r}: hyperparameter {key}={value!r} is not a valid "
            f"{type(default).__name__}"
        ) from None


def positive(method: str, **values: float) -> None:
    """Shared range check for Config.validate: every named value must be > 0."""
    for k, v in values.items():
        if not v > 0:
            raise McbenchError(f"method {method!r}: {k} must be > 0, got {v}")
