"""Network builders of the common protocol.

Every method gets its nets from here through `Problem`, so a comparison never mixes
architectures by accident: MLPFamily for flat data, DCGANFamily for images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) = 2 sigmoid(2x) - 1, with tanh's own fused backward.

    This torch CPU build computes `torch.tanh` at about 2.6 ns per element (plus a copy)
    against 0.4 for `torch.sigmoid`; tanh was 15-25% of a 2-D update. The forward is
    four in-place passes over one buffer; the backward is `tanh_backward(g, y)` on the
    saved output, itself differentiable (through y), so double backward (LBT's unrolled
    estimator, Unrolled GAN) works. Absolute error against `torch.tanh` at most 2.4e-7
    (about 2 float32 ulps of 1) over the whole range, tested; relative error is larger
    only for |x| < 1e-4, where both are within 1e-7 of x.
    """

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.mul(x, 2).sigmoid_().mul_(2).sub_(1)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def fast_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh through sigmoid (see `_SigmoidTanh`); `torch.tanh` on a GPU, where it is fast,
    and under torch.compile: dynamo traces the Function inside `torch.func.grad` without
    its second derivative (an unrolled update's gradient came out 43% wrong), and a
    compiled update gets its own fast tanh (`mcbench.run.passes`)."""
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return torch.tanh(x)
    return _SigmoidTanh.apply(x)


class FastTanh(nn.Tanh):
    """`activation="tanh-fast"`: tanh computed by `fast_tanh`. A subclass of nn.Tanh, so
    code that looks for tanh layers finds it. Not the protocol's default: measured in
    whole GAN and LBT updates on our CPU it was no faster than torch's tanh (the Function's
    Python overhead and the extra passes eat the kernel's gain), and it changes numbers at
    rounding level."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_tanh(x)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "tanh-fast": FastTanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
}


def mlp(
    in_dim: int,
    out_dim: int,
    hidden: Sequence[int] = (128, 128),
    activation: str = "tanh",
    *,
    batchnorm: bool = False,
    bn_momentum: float = 0.1,
    maxout: int = 0,
) -> nn.Sequential:
    """Fully connected net: `hidden` layers with `activation`, linear output.

    `batchnorm`: each hidden layer is Linear (no bias, as batch norm's shift replaces
    it) -> BatchNorm1d -> activation (PacGAN's generator). `maxout` > 0: each hidden
    layer is a maxout layer of that many pieces instead (PacGAN's discriminator).
    """
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        if maxout:
            layers.append(Maxout(d, h, maxout))
        elif batchnorm:
            layers += [nn.Linear(d, h, bias=False), nn.BatchNorm1d(h, momentum=bn_momentum), act()]
        else:
            layers += [nn.Linear(d, h), act()]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class Maxout(nn.Module):
    """Maxout layer (Goodfellow et al. 2013): a linear map to `out_dim` x `pieces`
    units, then the maximum over each unit's pieces."""

    def __init__(self, in_dim: int, out_dim: int, pieces: int) -> None:
        super().__init__()
        self.out_dim, self.pieces = out_dim, pieces
        self.linear = nn.Linear(in_dim, out_dim * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        return h.reshape(*h.shape[:-1], self.out_dim, self.pieces).amax(-1)


INITS = ("torch", "glorot", "normal0.02", "orthogonal1.4")


def initialize(net: nn.Module, init: str) -> nn.Module:
    """Re-initialise every Linear / conv layer of `net` in place, as a paper's code does.

    "torch": PyTorch's defaults (left as built); "glorot": Glorot-uniform weights,
    bound sqrt(6 / (fan_in + fan_out)), zero biases (TensorFlow's dense default, the LBT
    authors' code); "normal0.02": weights N(0, 0.02^2), zero biases (PacGAN's code);
    "orthogonal1.4": orthogonal weights with gain 1.4, zero biases (the Unrolled GAN
    demo). Batch-norm scales stay 1 and shifts 0 under every scheme.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choices: {', '.join(INITS)}")
    if init == "torch":
        return net
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            if init == "glorot":
                nn.init.xavier_uniform_(m.weight)
            elif init == "orthogonal1.4":
                nn.init.orthogonal_(m.weight, gain=1.4)
            else:
                nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


class Reshape(nn.Module):
    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


class JointMLP(nn.Module):
    """MLP on a flattened input, optionally concatenated with a flat extra input."""

    def __init__(
        self, in_dim: int, extra_dim: int, out_dim: int, hidden, activation, maxout: int = 0
    ) -> None:
        super().__init__()
        self.extra_dim = extra_dim
        self.net = mlp(in_dim + extra_dim, out_dim, hidden, activation, maxout=maxout)

    def forward(self, x, extra=None):
        x = x.flatten(1)
        if self.extra_dim:
            x = torch.cat([x, extra.flatten(1)], dim=1)
        return self.net(x)


def flat_dim(shape: Sequence[int]) -> int:
    return math.prod(shape)


class MLPFamily:
    """Builders for flat data (the 2-D mixtures): every net is an MLP of `hidden` units.

    A paper's profile may give the generator its own widths and batch norm (`g_hidden`,
    `g_batchnorm`), the critic its own widths and maxout layers (`d_hidden`, `d_maxout`
    pieces) and every net the paper code's initialisation (`init`, see `initialize`).
    The encoder (VEEGAN's reconstructor, ALI's encoder) is the critic's architecture
    with a vector output; `mlp()` (LBT's estimator) uses `hidden` and `activation`.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        hidden: Sequence[int],
        activation: str,
        *,
        g_hidden: Sequence[int] | None = None,
        g_batchnorm: bool = False,
        bn_momentum: float = 0.1,
        d_hidden: Sequence[int] | None = None,
        d_maxout: int = 0,
        init: str = "torch",
    ) -> None:
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choices: {', '.join(INITS)}")
        self.data_shape = tuple(data_shape)
        self.hidden = tuple(hidden)
        self.activation = activation
        self.g_hidden = self.hidden if g_hidden is None else tuple(g_hidden)
        self.g_batchnorm = g_batchnorm
        self.bn_momentum = bn_momentum
        self.d_hidden = self.hidden if d_hidden is None else tuple(d_hidden)
        self.d_maxout = d_maxout
        self.init = init

    def generator(self, latent_dim: int) -> nn.Module:
        net = mlp(
            latent_dim,
            flat_dim(self.data_shape),
            self.g_hidden,
            self.activation,
            batchnorm=self.g_batchnorm,
            bn_momentum=self.bn_momentum,
        )
        initialize(net, self.init)
        if len(self.data_shape) > 1:
            net.append(Reshape(self.data_shape))
        return net

    def critic(
        self, in_shape: Sequence[int] | None = None, out_dim: int = 1, extra_dim: int = 0
    ) -> nn.Module:
        """A discriminator-like net on data of `in_shape` (default: one sample).

        With `extra_dim` > 0 it takes a second input, a flat vector (a latent code, for
        the (z, x) discriminators of VEEGAN and ALI): ``net(x, extra)``.
        """
        shape = self.data_shape if in_shape is None else tuple(in_shape)
        net = JointMLP(
            flat_dim(shape), extra_dim, out_dim, self.d_hidden, self.activation, self.d_maxout
        )
        return initialize(net, self.init)

    def encoder(self, in_shape: Sequence[int] | None = None, out_dim: int = 2) -> nn.Module:
        """Maps data to a vector (reconstructors, VAE encoders)."""
        return self.critic(in_shape, out_dim)

    def mlp(self, in_dim: int, out_dim: int, hidden: Sequence[int] | None = None) -> nn.Module:
        net = mlp(in_dim, out_dim, self.hidden if hidden is None else hidden, self.activation)
        return initialize(net, self.init)


# -- images ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DCGANSpec:
    """Sizes of a DCGAN-style pair (the discriminator's conv widths at d_ratio = 1).

    Generator: dense layers `g_dense`, a dense map to `g_channels[0]` x b x b, then one
    stride-2 transposed conv per further entry of `g_channels` and a last one to the
    image channels (so b = H / 2**len(g_channels)); batch norm and the protocol's
    activation after every hidden layer, sigmoid output. Discriminator: stride-2 convs of
    `d_channels` (leaky ReLU 0.2, no batch norm), then dense layers `d_dense`, then out.
    """

    g_dense: tuple[int, ...] = (1024,)
    g_channels: tuple[int, ...] = (32, 16)
    g_kernel: int = 5
    d_channels: tuple[int, ...] = (16, 32)
    d_kernel: int = 4
    d_dense: tuple[int, ...] = (1024,)
    joint_hidden: int = 512  # (x, z) critics without d_dense still get one joint layer


class ConvCritic(nn.Module):
    """Stride-2 conv trunk on an image, optionally joined with a flat `extra` input."""

    def __init__(
        self,
        in_shape: Sequence[int],
        channels: Sequence[int],
        kernel: int,
        dense: Sequence[int],
        out_dim: int,
        extra_dim: int = 0,
    ) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.extra_dim = extra_dim
        c, h, w = self.in_shape
        pad = (kernel - 1) // 2
        layers: list[nn.Module] = []
        for width in channels:
            layers += [nn.Conv2d(c, width, kernel, 2, pad), nn.LeakyReLU(0.2)]
            c = width
            h = (h + 2 * pad - kernel) // 2 + 1
            w = (w + 2 * pad - kernel) // 2 + 1
        layers.append(nn.Flatten())
        self.trunk = nn.Sequential(*layers)
        d = c * h * w + extra_dim
        head: list[nn.Module] = []
        for width in dense:
            head += [nn.Linear(d, width), nn.LeakyReLU(0.2)]
            d = width
        head.append(nn.Linear(d, out_dim))
        self.head = nn.Sequential(*head)

    def forward(self, x, extra=None):
        h = self.trunk(x.reshape(x.shape[0], *self.in_shape))
        if self.extra_dim:
            h = torch.cat([h, extra.flatten(1)], dim=1)
        return self.head(h)


class DCGANFamily:
    """Builders for images (C, H, W) in [0, 1]: DCGAN-style conv nets; the same methods
    as MLPFamily, so every method runs on images unchanged.

    PacGAN's packed critic takes in_shape (m*C, H, W) (or (m, C, H, W)); VEEGAN/ALI's
    critic(extra_dim=latent) is D(x, z); encoder(out_dim) is the conv trunk with a
    vector output (reconstructors); mlp() is a plain MLP on flat vectors (LBT's VAE).
    `d_ratio` scales the discriminator's conv widths (the papers' D = 1/4, 1/2, 1).
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        hidden: Sequence[int],
        activation: str,
        spec: DCGANSpec | None = None,
        d_ratio: float = 1.0,
        init: str = "torch",
    ) -> None:
        self.data_shape = tuple(data_shape)
        self.init = init  # see `initialize`: a paper's code's weight initialisation
        if len(self.data_shape) != 3:
            raise ValueError(f"DCGANFamily needs (C, H, W) data, got {self.data_shape}")
        self.hidden = tuple(hidden)
        self.activation = activation
        self.spec = spec or DCGANSpec()
        self.d_ratio = float(d_ratio)
        _, h, w = self.data_shape
        ups = 2 ** len(self.spec.g_channels)
        if h % ups or w % ups:
            raise ValueError(f"image size {h}x{w} is not a multiple of {ups}")
        self.base = (h // ups, w // ups)

    def generator(self, latent_dim: int) -> nn.Module:
        s, act = self.spec, ACTIVATIONS[self.activation]
        layers: list[nn.Module] = []
        d = latent_dim
        for width in s.g_dense:
            layers += [nn.Linear(d, width, bias=False), nn.BatchNorm1d(width), act()]
            d = width
        c0, (bh, bw) = s.g_channels[0], self.base
        layers += [nn.Linear(d, c0 * bh * bw, bias=False), nn.BatchNorm1d(c0 * bh * bw), act()]
        layers.append(Reshape((c0, bh, bw)))
        k, pad = s.g_kernel, (s.g_kernel - 1) // 2
        out_pad = 2 + 2 * pad - k  # doubles the size exactly ("same" padding)
        c = c0
        for width in s.g_channels[1:]:
            layers += [
                nn.ConvTranspose2d(c, width, k, 2, pad, out_pad, bias=False),
                nn.BatchNorm2d(width),
                act(),
            ]
            c = width
        layers += [nn.ConvTranspose2d(c, self.data_shape[0], k, 2, pad, out_pad), nn.Sigmoid()]
        return initialize(nn.Sequential(*layers), self.init)

    def d_channels(self, ratio: float | None = None) -> tuple[int, ...]:
        r = self.d_ratio if ratio is None else ratio
        return tuple(max(1, int(c * r)) for c in self.spec.d_channels)

    def _conv(
        self, in_shape: Sequence[int] | None, out_dim: int, extra_dim: int, ratio: float
    ) -> nn.Module:
        shape = self.data_shape if in_shape is None else tuple(in_shape)
        if len(shape) == 4:  # (m, C, H, W): pack the m samples along channels
            shape = (shape[0] * shape[1], *shape[2:])
        if len(shape) != 3:  # not an image (e.g. a latent code): an MLP
            net = JointMLP(flat_dim(shape), extra_dim, out_dim, self.hidden, "leaky_relu")
            return initialize(net, self.init)
        s = self.spec
        dense = s.d_dense or ((s.joint_hidden,) if extra_dim else ())
        net = ConvCritic(shape, self.d_channels(ratio), s.d_kernel, dense, out_dim, extra_dim)
        return initialize(net, self.init)

    def critic(
        self, in_shape: Sequence[int] | None = None, out_dim: int = 1, extra_dim: int = 0
    ) -> nn.Module:
        """Conv discriminator on images of `in_shape`; ``net(x, extra)`` if extra_dim.
        Its conv widths are scaled by d_ratio."""
        return self._conv(in_shape, out_dim, extra_dim, self.d_ratio)

    def encoder(self, in_shape: Sequence[int] | None = None, out_dim: int = 2) -> nn.Module:
        """Conv net from images to a vector (VEEGAN's reconstructor, ALI's encoder): the
        discriminator's architecture at full width (d_ratio is about D only)."""
        return self._conv(in_shape, out_dim, 0, 1.0)

    def mlp(self, in_dim: int, out_dim: int, hidden: Sequence[int] | None = None) -> nn.Module:
        net = mlp(in_dim, out_dim, self.hidden if hidden is None else hidden, self.activation)
        return initialize(net, self.init)
