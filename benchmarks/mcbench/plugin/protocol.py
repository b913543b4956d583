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
from mcbench.methods.blocks.nets import DCGANFamily, DCGANSpec, MLPFamily
from mcbench.plugin.method import Problem


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


@dataclass(frozen=True)
class ImageProtocol(Protocol):
    """Protocol of an image family: DCGAN-style conv nets (`nets.DCGANFamily`).

    `hidden` is the width of the dense layers and the default MLP width; `activation`
    is the generator's (the discriminator uses leaky ReLU 0.2); `d_ratio` scales the
    discriminator's conv widths (the papers compare D = 1/4, 1/2 and 1).
    """

    d_ratio: float = 1.0
    spec: DCGANSpec = dataclasses.field(default_factory=DCGANSpec)


# Stacked MNIST (LBT paper 5.2 and the LBT authors' code): generator dense 1024 ->
# 7*7*32 -> deconv 16 -> deconv 3 (5x5, stride 2, batch norm, ReLU, sigmoid), latent
# 256; discriminator conv 16 -> conv 32 (4x4, stride 2) -> dense 1024 -> 1, leaky ReLU
# 0.2, no batch norm (the code's default), conv widths x d_ratio (default 1); all lr
# 1e-4, Adam beta1 0.5, batch 512, 300,000 iterations; 26,000 evaluation samples; VAE
# estimator MLPs 1000-400 (ReLU, as in the code).
STACKED_MNIST = ImageProtocol(
    family="stacked-mnist",
    hidden=(1024,),
    activation="relu",
    latent_dim=256,
    batch_size=512,
    lr_g=1e-4,
    lr_d=1e-4,
    betas=(0.5, 0.999),
    steps=300_000,
    eval_every=10_000,
    eval_samples=26_000,
    source="LBT paper 5.2 (Stacked MNIST, 26,000 samples, VAE 1000-400); LBT authors' "
    "code (DCGAN sizes, d_ratio, lr 1e-4, beta1 0.5, batch 512, 300k iterations)",
    estimator_hidden=(1000, 400),
    d_ratio=1.0,
    spec=DCGANSpec(),
)

# MNIST: the Stacked MNIST nets on one channel (no paper protocol of its own).
MNIST = dataclasses.replace(
    STACKED_MNIST,
    family="mnist",
    source="the Stacked MNIST protocol on one channel (no paper setting of its own)",
)

# CIFAR-10 / CelebA: sizes from the LBT authors' CIFAR-10 code (generator dense
# 4x4x512 -> deconv 256 -> 128 -> 3, 5x5 stride 2; discriminator conv 64 -> 128 -> 256,
# 5x5 stride 2, leaky ReLU 0.2), one more level for 64x64 CelebA; sigmoid output on
# [0, 1] data where the code uses tanh on [-1, 1]; no batch norm or input dropout in D;
# optimiser and batch of DCGAN (Radford et al. 2016). Judged by sample grids only.
CIFAR10 = ImageProtocol(
    family="cifar10",
    hidden=(1024,),
    activation="relu",
    latent_dim=100,
    batch_size=64,
    lr_g=2e-4,
    lr_d=2e-4,
    betas=(0.5, 0.999),
    steps=100_000,
    eval_every=10_000,
    eval_samples=1_000,
    source="LBT authors' CIFAR-10 code (net sizes); DCGAN paper (Adam 2e-4, beta1 0.5, "
    "batch 64, latent 100)",
    estimator_hidden=(1000, 400),
    spec=DCGANSpec(
        g_dense=(),
        g_channels=(512, 256, 128),
        g_kernel=5,
        d_channels=(64, 128, 256),
        d_kernel=5,
        d_dense=(),
    ),
)
CELEBA = dataclasses.replace(
    CIFAR10,
    family="celeba",
    source="as cifar10, one more level for 64x64 (LBT paper 5.2 shows CelebA samples only)",
    spec=DCGANSpec(
        g_dense=(),
        g_channels=(512, 256, 128, 64),
        g_kernel=5,
        d_channels=(64, 128, 256, 512),
        d_kernel=5,
        d_dense=(),
    ),
)

PROTOCOLS.update(
    {
        "stacked-mnist": STACKED_MNIST,
        # The same experiment with smaller discriminators (LBT Fig. 3, PacGAN Table 3).
        "stacked-mnist-d0.5": dataclasses.replace(
            STACKED_MNIST, family="stacked-mnist-d0.5", d_ratio=0.5
        ),
        "stacked-mnist-d0.25": dataclasses.replace(
            STACKED_MNIST, family="stacked-mnist-d0.25", d_ratio=0.25
        ),
        "mnist": MNIST,
        "cifar10": CIFAR10,
        "celeba": CELEBA,
    }
)


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
    rng: torch.Generator | list[torch.Generator],
    data_rng: torch.Generator | list[torch.Generator],
    init_states: list[torch.Tensor] | None = None,
    capturable: bool = False,
) -> Problem:
    """The Problem a method is built from; every net it builds lands on `device`.

    With lists of generators (one method and one data stream per seed) and each seed's
    CPU init state, it is a replica problem: its nets are `mcbench.plugin.replicas` stacks,
    replica r initialised as the sequential run of seed r would be.
    """
    if isinstance(protocol, ImageProtocol):
        nets = DCGANFamily(
            dataset.shape, protocol.hidden, protocol.activation, protocol.spec, protocol.d_ratio
        )
    else:
        nets = MLPFamily(dataset.shape, protocol.hidden, protocol.activation)

    if isinstance(rng, list):
        from mcbench.plugin.replicas import replica_builder

        if not isinstance(data_rng, list) or init_states is None:
            raise ValueError("a replica problem needs one data stream and init state per seed")
        if not len(rng) == len(data_rng) == len(init_states) > 0:
            raise ValueError("replica streams and init states differ in number")
        replicas: int | None = len(rng)

        def place(build):
            return replica_builder(build, init_states, device)

        def sample_real(n: int) -> torch.Tensor:
            return torch.stack([dataset.sample(n, g, device) for g in data_rng])

    else:
        replicas = None

        def place(build):
            def wrapped(*args, **kwargs):
                return build(*args, **kwargs).to(device)

            return wrapped

        def sample_real(n: int) -> torch.Tensor:
            return dataset.sample(n, data_rng, device)

    return Problem(
        data_shape=tuple(dataset.shape),
        latent_dim=protocol.latent_dim,
        device=device,
        rng=rng,
        lr_g=protocol.lr_g,
        lr_d=protocol.lr_d,
        betas=protocol.betas,
        batch_size=protocol.batch_size,
        generator=place(nets.generator),
        critic=place(nets.critic),
        encoder=place(nets.encoder),
        mlp=place(nets.mlp),
        estimator_hidden=protocol.estimator_hidden or protocol.hidden,
        sample_real=sample_real,
        family=protocol.family,
        replicas=replicas,
        capturable=capturable,
    )
