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
    """Fixed terms of comparison for one dataset family, under one named profile.

    `name` is the profile ("common": mcbench's own, the default; or a paper's: see
    PROFILES). The fields after `estimator_hidden` let a profile follow a paper's code:
    generator / critic widths of their own, batch norm in the generator, maxout critic
    layers, the code's weight initialisation, a fixed training set drawn once instead of
    fresh draws each step, and a batch counted in packs (PacGAN).
    """

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
    name: str = "common"
    g_hidden: tuple[int, ...] | None = None  # None: `hidden`
    g_batchnorm: bool = False
    bn_momentum: float = 0.1  # PyTorch's convention (weight of the new batch statistic)
    d_hidden: tuple[int, ...] | None = None  # None: `hidden`
    d_maxout: int = 0  # maxout pieces per critic hidden layer; 0: `activation` layers
    init: str = "torch"  # see nets.initialize: torch | glorot | normal0.02
    train_size: int | None = None  # a fixed training set of this many points; None: fresh
    batch_in_packs: bool = False  # batch_size counts packs of m samples (PacGAN's code)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """`as_dict` as hashed into a run's key: the profile fields at their defaults are
        left out, so runs under the common protocol keep the keys they had before
        profiles existed; any other profile differs in `name`, hence in key."""
        out = self.as_dict()
        for f in dataclasses.fields(Protocol):
            if f.name in PROFILE_FIELDS and out[f.name] == f.default:
                del out[f.name]
        return out


PROFILE_FIELDS = (
    "name",
    "g_hidden",
    "g_batchnorm",
    "bn_momentum",
    "d_hidden",
    "d_maxout",
    "init",
    "train_size",
    "batch_in_packs",
)


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


# -- the compared papers' own protocols (profiles) ---------------------------------------

# PacGAN (Lin et al. 2018) Table 1, from the authors' code (fjxmlzn/PacGAN,
# synthetic_data_experiments/2DRing_GAN&PacGAN and 2DGrid_GAN&PacGAN: config.py,
# pacgan_task.py, pacgan/streams.py): generator 2 -> 4 x 400 (Linear without bias ->
# batch norm -> ReLU) -> 2 (linear, with bias), latent 2-d standard normal; discriminator
# 3 maxout layers of 200 units x 5 pieces -> linear 1, on m points concatenated; every
# weight N(0, 0.02^2), biases 0; batch-norm population statistics averaged with weight
# 0.05; Adam lr 1e-4, beta1 0.8 (beta2 Blocks' default 0.999) for both nets; a fixed
# training set of 100,000 packs drawn once (GaussianPackingMixture), batches of 100
# packs (100 * m points per side), 400 epochs = 400,000 updates; metrics on 2,500
# samples after every epoch. Left to the method, not the profile: their G and D are
# updated simultaneously from one forward pass (mcbench's gan/pacgan alternate D then
# G); their batches go through the set in shuffled epochs, mcbench draws each batch
# uniformly from the fixed set (with replacement) so that a checkpoint resumes exactly.
# Other methods: the (x, z) critics of ALI and VEEGAN are this maxout critic on [x, z],
# as in their ALI code (2DRing_ALI: joint maxout discriminator on x and z); encoders
# (ALI's, VEEGAN's reconstructor) are the maxout net with a vector output, where their
# ALI encoder is a stochastic 2 x 400 ReLU + batch-norm MLP on [x, noise] (mcbench's ALI
# is the deterministic BiGAN encoder). LBT's estimator MLPs get 4 x 400 ReLU (`hidden`).
PACGAN_MIXTURE2D = dataclasses.replace(
    MIXTURE2D,
    name="pacgan",
    hidden=(400, 400, 400, 400),
    activation="relu",
    latent_dim=2,
    batch_size=100,
    lr_g=1e-4,
    lr_d=1e-4,
    betas=(0.8, 0.999),
    steps=400_000,
    eval_every=1_000,
    eval_samples=2_500,
    source="PacGAN authors' code fjxmlzn/PacGAN synthetic_data_experiments (config.py, "
    "pacgan_task.py, streams.py); PacGAN paper Table 1 (2,500 samples, 10 runs)",
    g_hidden=(400, 400, 400, 400),
    g_batchnorm=True,
    bn_momentum=0.05,
    d_hidden=(200, 200, 200),
    d_maxout=5,
    init="normal0.02",
    train_size=100_000,
    batch_in_packs=True,
)

# LBT (Zhou et al., ICLR 2019 submission), from the authors' code (taufikxu/
# Learning-By-Teaching, 2-D scripts) where it differs from or completes the paper: 2 x 128
# tanh MLPs for every net, generator latent 256, TensorFlow's dense initialisation
# (Glorot-uniform weights, zero biases), Adam beta1 0.5 (eps 1e-8), G lr 1e-3,
# discriminator / estimator lr 1e-4, ring batch 512; grid batch 2048 and 2,000,000
# iterations. The ring's budget is the paper's 0.9M (its curves); 500,000 evaluation
# samples (paper 5.1). The method-level settings (VAE latent 32, fixed decoder variance,
# 2-3 estimator updates at 3 x lr, clipping) are the lbt preset `authors-code`, not here.
LBT_MIXTURE2D = dataclasses.replace(
    MIXTURE2D,
    name="lbt",
    init="glorot",
    source="LBT authors' code taufikxu/Learning-By-Teaching (tanh, latent 256, Glorot "
    "init, Adam beta1 0.5, lr 1e-3/1e-4, batch 512; grid batch 2048, 2M iterations); "
    "LBT paper 5.1 (2 x 128 nets, 0.9M ring iterations, 500k samples)",
)
LBT_GRID = dataclasses.replace(LBT_MIXTURE2D, batch_size=2048, steps=2_000_000)

# Unrolled GAN (Metz et al. 2016), its public 2-D demo (poolio/unrolled_gan, "Unrolled GAN
# demo.ipynb"): 2 x 128 tanh MLPs, latent 256 standard normal, batch 512, Adam D lr 1e-4,
# G lr 1e-3, beta1 0.5, eps 1e-8, 25,000 iterations, K = 5 (the method's default); every
# dense layer orthogonal-initialised with gain 1.4, biases 0 (TF-slim). Left open: the
# paper gives no 2-D nets or batch; the demo updates G and D in one session call (mcbench
# alternates), samples its ring fresh each step with std 0.01, radius 1 (`ring-veegan`;
# its linspace(0, 2 pi, 8) ring has 7 distinct modes; ours 8) and fixes no evaluation
# sample count: 2,500 here, as VEEGAN and PacGAN.
UNROLLED_MIXTURE2D = dataclasses.replace(
    MIXTURE2D,
    name="unrolled",
    steps=25_000,
    eval_every=1_000,
    eval_samples=2_500,
    init="orthogonal1.4",
    source="Unrolled GAN public 2-D demo poolio/unrolled_gan (2 x 128 tanh, latent 256, "
    "batch 512, lr 1e-3/1e-4, beta1 0.5, orthogonal init gain 1.4, 25k iterations); "
    "2,500 samples as VEEGAN/PacGAN",
)

# VEEGAN (Srivastava et al. 2017): no profile. Its paper's text does not fix the 2-D nets,
# optimiser or batch completely, and its public 2-D notebook (akashgit/VEEGAN,
# VEEGAN_2D_RING.ipynb) could not be read here; its Table 1 is run under the common
# protocol on its data (`ring-veegan`, `grid-veegan`) and 2,500 samples (suite
# `veegan-table1`).

# LBT (ICLR 2019 submission) Table 1 and Fig. 3 in the authors' own setting: the common
# Stacked MNIST protocol is already theirs (LBT-GAN_smnist.py: nets, Adam 1e-4 / beta1 0.5,
# batch 512, 300,000 iterations, 26,000 samples); the profile adds their TensorFlow
# layers' default initialisation (Glorot-uniform weights, zero biases) for every net.
# Their estimator settings (Bernoulli VAE, M = 15, warm-up, ...) are the method's
# `authors-code` preset, not the profile's.
LBT_STACKED = {
    family: dataclasses.replace(
        PROTOCOLS[family],
        name="lbt",
        init="glorot",
        source=PROTOCOLS[family].source + "; TensorFlow default init (Glorot-uniform, zero "
        "biases) as in LBT-GAN_smnist.py",
    )
    for family in ("stacked-mnist", "stacked-mnist-d0.5", "stacked-mnist-d0.25")
}

# name -> {dataset name or family -> Protocol}; a dataset's own entry wins over its
# family's. "common" is mcbench's protocol, the default of every run.
PROFILES: dict[str, dict[str, Protocol]] = {
    "common": PROTOCOLS,
    "pacgan": {"mixture2d": PACGAN_MIXTURE2D},
    "lbt": {"mixture2d": LBT_MIXTURE2D, "grid": LBT_GRID, **LBT_STACKED},
    "unrolled": {"mixture2d": UNROLLED_MIXTURE2D},
}


def check_profile(name: str) -> str:
    """`name` if it is a profile, else a one-line error listing the choices."""
    if name not in PROFILES:
        raise McbenchError(f"unknown protocol {name!r}; choices: {', '.join(PROFILES)}")
    return name


def get_protocol(family: str, profile: str = "common", dataset: str | None = None) -> Protocol:
    """The protocol of a dataset family (or of `dataset` itself, where the profile sets
    one of its own) under a named profile."""
    table = PROFILES[check_profile(profile)]
    if dataset is not None and dataset in table:
        return table[dataset]
    try:
        return table[family]
    except KeyError:
        what = "protocol" if profile == "common" else f"{profile!r} protocol"
        raise McbenchError(
            f"no {what} for dataset family {family!r}; choices: {', '.join(table)}"
        ) from None


def make_problem(
    dataset: Dataset,
    protocol: Protocol,
    device: torch.device,
    rng: torch.Generator | list[torch.Generator],
    data_rng: torch.Generator | list[torch.Generator],
    init_states: list[torch.Tensor] | None = None,
    capturable: bool = False,
    pack: int = 1,
) -> Problem:
    """The Problem a method is built from; every net it builds lands on `device`.

    With lists of generators (one method and one data stream per seed) and each seed's
    CPU init state, it is a replica problem: its nets are `mcbench.plugin.replicas` stacks,
    replica r initialised as the sequential run of seed r would be.

    `pack` is the method's pack size m: under a profile with `batch_in_packs` (PacGAN's
    code) a batch is batch_size packs, batch_size * m samples. With `train_size`, each
    data stream first draws its fixed training set (train_size * pack points), then every
    batch is drawn from it.
    """
    if isinstance(protocol, ImageProtocol):
        nets = DCGANFamily(
            dataset.shape,
            protocol.hidden,
            protocol.activation,
            protocol.spec,
            protocol.d_ratio,
            init=protocol.init,
        )
    else:
        nets = MLPFamily(
            dataset.shape,
            protocol.hidden,
            protocol.activation,
            g_hidden=protocol.g_hidden,
            g_batchnorm=protocol.g_batchnorm,
            bn_momentum=protocol.bn_momentum,
            d_hidden=protocol.d_hidden,
            d_maxout=protocol.d_maxout,
            init=protocol.init,
        )
    batch_size = protocol.batch_size * (pack if protocol.batch_in_packs else 1)
    draw = _sampler(dataset, protocol.train_size and protocol.train_size * pack, device)

    if isinstance(rng, list):
        from mcbench.plugin.replicas import replica_builder

        if not isinstance(data_rng, list) or init_states is None:
            raise ValueError("a replica problem needs one data stream and init state per seed")
        if not len(rng) == len(data_rng) == len(init_states) > 0:
            raise ValueError("replica streams and init states differ in number")
        replicas: int | None = len(rng)

        def place(build):
            return replica_builder(build, init_states, device)

        draws = [draw(g) for g in data_rng]

        def sample_real(n: int) -> torch.Tensor:
            return torch.stack([d(n) for d in draws])

    else:
        replicas = None

        def place(build):
            def wrapped(*args, **kwargs):
                return build(*args, **kwargs).to(device)

            return wrapped

        sample_real = draw(data_rng)

    return Problem(
        data_shape=tuple(dataset.shape),
        latent_dim=protocol.latent_dim,
        device=device,
        rng=rng,
        lr_g=protocol.lr_g,
        lr_d=protocol.lr_d,
        betas=protocol.betas,
        batch_size=batch_size,
        generator=place(nets.generator),
        critic=place(nets.critic),
        encoder=place(nets.encoder),
        mlp=place(nets.mlp),
        estimator_hidden=protocol.estimator_hidden or protocol.hidden,
        sample_real=sample_real,
        family=protocol.family,
        dataset=dataset.name,
        replicas=replicas,
        capturable=capturable,
    )


def _sampler(dataset: Dataset, train_size: int | None, device: torch.device):
    """Per data stream, the function n -> a real batch: fresh draws from the dataset,
    or (with `train_size`) draws from a training set of that size drawn once, up front,
    from the same stream; indices are drawn uniformly from the stream too, so the stream's
    state (checkpointed) is all a resumed run needs."""

    def draw(g: torch.Generator):
        if not train_size:
            return lambda n: dataset.sample(n, g, device)
        train = dataset.sample(train_size, g, device)

        def sample(n: int) -> torch.Tensor:
            idx = torch.randint(train_size, (n,), generator=g, device=g.device)
            return train[idx.to(device)]

        return sample

    return draw
