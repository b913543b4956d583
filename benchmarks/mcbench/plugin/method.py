"""The method interface: what a method gets from the harness and what it must offer.

A method owns its whole update (`step`) because methods train different sets of nets
(a look-ahead discriminator, a reconstructor, an estimator). Devices, seeds, timing,
evaluation, logging and checkpoints belong to the harness, never to a method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from mcbench.errors import McbenchError

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
    # None: one seed, tensors (n, ...). R: R seeds trained together (mcbench.plugin.replicas),
    # `rng` a list of R generators, nets and tensors with a leading dimension R.
    replicas: int | None = None
    # Optimisers keep their step on the device, so a whole update can be captured as a
    # CUDA graph (mcbench.run.graphs); off by default (it is slower eagerly).
    capturable: bool = False

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

    def noise(self, n: int, dim: int | None = None, rng: Rng | None = None) -> torch.Tensor:
        """Standard normal codes from the method's seeded stream (or from `rng`): (n, d),
        or (R, n, d) with replica r drawn from its own stream."""
        d = self.latent_dim if dim is None else dim
        rng = rng or self.rng
        if isinstance(rng, list):
            return torch.stack([torch.randn(n, d, generator=g, device=self.device) for g in rng])
        return torch.randn(n, d, generator=rng, device=self.device)

    def spawn_rng(self) -> Rng:
        """A new stream seeded from the method's (one per replica), e.g. for diagnostics
        that must not shift the training noise."""

        def child(g: torch.Generator) -> torch.Generator:
            seed = int(torch.randint(2**62, (1,), generator=g, device=self.device))
            return torch.Generator(self.device).manual_seed(seed)

        return [child(g) for g in self.rng] if isinstance(self.rng, list) else child(self.rng)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over samples (and every per-sample dimension): a scalar for one seed,
        (R,) with replicas. Losses are built from this, so replica r's gradient is
        exactly its own run's: the harness differentiates the sum over replicas."""
        return x.mean() if self.replicas is None else x.reshape(x.shape[0], -1).mean(1)

    def chunk(self, x: torch.Tensor, k: int) -> list[torch.Tensor]:
        """Split a batch into k batches along the sample dimension."""
        return list(x.chunk(k, dim=self.batch_dim))

    def clip_grad_norm_(self, params: Iterable[nn.Parameter], max_norm: float) -> None:
        """Global-norm gradient clipping, per replica with replicas."""
        if self.replicas is None:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
            from mcbench.plugin.replicas import clip_grad_norm_

            clip_grad_norm_(params, max_norm)

    def adam(self, params, lr: float, betas: tuple[float, float] | None = None):
        """The protocol's optimiser, so methods never pick their own by accident."""
        if self.capturable:
            return torch.optim.Adam(params, lr=lr, betas=betas or self.betas, capturable=True)
        return torch.optim.Adam(params, lr=lr, betas=betas or self.betas)


class Method:
    """Base class of every method plugin.

    Subclasses set `name`, a `Config` dataclass of hyperparameters (paper defaults) and
    implement `step(real) -> losses` (one generator update, inner loops included) and
    `sample(n)`. `presets` maps a preset name to config overrides; `aliases` maps an
    extra registry name (e.g. ``pacgan2``) to overrides.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = None  # type: ignore[assignment]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    aliases: ClassVar[dict[str, dict[str, Any]]] = {}
    # Where the defaults come from, shown in README's method table.
    defaults_from: ClassVar[str] = ""
    # True: `step` is written for both layouts (see Problem.replicas), so the harness
    # may train several seeds together. Plugins that index batches by hand leave it
    # False and run one seed at a time.
    replicas: ClassVar[bool] = False

    def __init__(self, problem: Problem, config: Any) -> None:
        self.problem = problem
        self.cfg = config

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """One generator update on a real batch; returns detached scalar losses ((R,)
        per-replica losses with replicas)."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, rng: Rng | None = None) -> torch.Tensor:
        """n generated samples (generator in eval mode); `rng` keeps evaluation from
        consuming the training noise stream."""
        g = self.generator_module()
        was_training = g.training
        g.eval()
        out = g(self.problem.noise(n, rng=rng))
        g.train(was_training)
        return out

    def diagnostics(self) -> dict[str, float]:
        """Extra curves recorded at each evaluation (e.g. LBT's ELBO on generated and
        real data). Called by the harness outside the timed step; default none."""
        return {}

    def generator_module(self) -> nn.Module:
        """The net whose samples are evaluated; saved as the run's final generator."""
        return self.G  # type: ignore[attr-defined]

    def modules(self) -> dict[str, nn.Module]:
        return {k: v for k, v in vars(self).items() if isinstance(v, nn.Module)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.optim.Optimizer)}

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"module.{k}": m.state_dict() for k, m in self.modules().items()}
        out.update({f"optim.{k}": o.state_dict() for k, o in self.optimizers().items()})
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state[f"module.{k}"])
        for k, o in self.optimizers().items():
            o.load_state_dict(state[f"optim.{k}"])

    def extra_state(self) -> dict[str, Any]:
        """What a checkpoint needs beyond state_dict(): by default the method's own
        torch.Generator streams, tensors and plain numbers (counters) held as attributes.
        Override (with load_extra_state) for anything else, e.g. a list of tensors."""
        out: dict[str, Any] = {}
        for k, v in vars(self).items():
            if is_rng(v):
                out[f"rng.{k}"] = rng_state(v)
            elif isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter):
                out[f"tensor.{k}"] = v.detach().clone()
            elif isinstance(v, (int, float)):
                out[f"number.{k}"] = v
        return out

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        for key, v in state.items():
            kind, name = key.split(".", 1)
            if kind == "rng":
                set_rng_state(getattr(self, name), v)
            elif kind == "tensor":
                current = getattr(self, name)
                if current.shape == v.shape:
                    current.copy_(v)
                else:
                    setattr(self, name, v.to(current.device))
            else:
                setattr(self, name, v)

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
                    f"method {cls.name!r} has no preset {preset!r}; "
                    f"choices: {', '.join(sorted(cls.presets)) or 'none'}"
                )
            values.update(cls.presets[preset])
        values.update(overrides)
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        for key in values:
            if key not in fields:
                raise McbenchError(
                    f"method {cls.name!r} has no hyperparameter {key!r}; "
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
