"""The common training protocol: per dataset family, the nets, optimiser and batch size.

Every method is trained under the protocol of its dataset's family, so numbers are
comparable; a method's own hyperparameters (K, m, lambda, ...) live in its Config.
The budget (generator updates, evaluation schedule and sample count) comes from the
suite, with the defaults below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from mcbench.datasets.base import Dataset
from mcbench.errors import McbenchError
from mcbench.method import Problem
from mcbench.nets import MLPFamily


@dataclass(frozen=True)
class Protocol:
    """Fixed terms of comparison for one dataset family."""

    family: str
    hidden: tuple[int, ...]
    activation: str
    latent_dim: int
    batch_size: int
    lr_g: float
    lr_d: float
    betas: tuple[float, float]
    steps: int
    eval_every: int
    eval_samples: int
    source: str
    estimator_hidden: tuple[int, ...] | None = None  # None: the same as `hidden`

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# 2-D mixtures: the LBT paper fixes two hidden layers of 128 units for every net and
# Adam; it leaves activation, latent size, learning rates and batch size to its code,
# which agrees with the public Unrolled GAN demo: tanh, latent 256, G lr 1e-3,
# D/estimator lr 1e-4, beta1 0.5, batch 512. The paper evaluates 500,000 samples.
MIXTURE2D = Protocol(
    family="mixture2d",
    hidden=(128, 128),
    activation="tanh",
    latent_dim=256,
    batch_size=512,
    lr_g=1e-3,
    lr_d=1e-4,
    betas=(0.5, 0.999),
    steps=900_000,
    eval_every=10_000,
    eval_samples=500_000,
    source="LBT paper 5.1 (nets, Adam, 500k samples); LBT authors' code and Unrolled GAN "
    "demo (tanh, latent 256, lr 1e-3/1e-4, beta1 0.5, batch 512)",
)

PROTOCOLS: dict[str, Protocol] = {"mixture2d": MIXTURE2D}


def get_protocol(family: str) -> Protocol:
    try:
        return PROTOCOLS[family]
    except KeyError:
        raise McbenchError(
            f"no protocol for dataset family {family!r}; choices: {', '.join(PROTOCOLS)}"
        ) from None


def make_problem(
    dataset: Dataset,
    protocol: Protocol,
    device: torch.device,
    rng: torch.Generator,
    data_rng: torch.Generator,
) -> Problem:
    """The Problem a method is built from; every net it builds lands on `device`."""
    nets = MLPFamily(dataset.shape, protocol.hidden, protocol.activation)

    def on_device(build):
        def wrapped(*args, **kwargs):
            return build(*args, **kwargs).to(device)

        return wrapped

    return Problem(
        data_shape=tuple(dataset.shape),
        latent_dim=protocol.latent_dim,
        device=device,
        rng=rng,
        lr_g=protocol.lr_g,
        lr_d=protocol.lr_d,
        betas=protocol.betas,
        batch_size=protocol.batch_size,
        generator=on_device(nets.generator),
        critic=on_device(nets.critic),
        encoder=on_device(nets.encoder),
        mlp=on_device(nets.mlp),
        estimator_hidden=protocol.estimator_hidden or protocol.hidden,
        sample_real=lambda n: dataset.sample(n, data_rng, device),
        family=protocol.family,
    )
