"""Network builders of the common protocol.

Every method gets its nets from here through `Problem`, so a comparison never mixes
architectures by accident. Image architectures join this module with the image datasets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
}


def mlp(
    in_dim: int,
    out_dim: int,
    hidden: Sequence[int] = (128, 128),
    activation: str = "tanh",
) -> nn.Sequential:
    """Fully connected net: `hidden` layers with `activation`, linear output."""
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), act()]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class Reshape(nn.Module):
    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


class JointMLP(nn.Module):
    """MLP on a flattened input, optionally concatenated with a flat extra input."""

    def __init__(self, in_dim: int, extra_dim: int, out_dim: int, hidden, activation) -> None:
        super().__init__()
        self.extra_dim = extra_dim
        self.net = mlp(in_dim + extra_dim, out_dim, hidden, activation)

    def forward(self, x, extra=None):
        x = x.flatten(1)
        if self.extra_dim:
            x = torch.cat([x, extra.flatten(1)], dim=1)
        return self.net(x)


def flat_dim(shape: Sequence[int]) -> int:
    return math.prod(shape)


class MLPFamily:
    """Builders for flat data (the 2-D mixtures): every net is an MLP of `hidden` units."""

    def __init__(self, data_shape: Sequence[int], hidden: Sequence[int], activation: str) -> None:
        self.data_shape = tuple(data_shape)
        self.hidden = tuple(hidden)
        self.activation = activation

    def generator(self, latent_dim: int) -> nn.Module:
        net = mlp(latent_dim, flat_dim(self.data_shape), self.hidden, self.activation)
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
        return JointMLP(flat_dim(shape), extra_dim, out_dim, self.hidden, self.activation)

    def encoder(self, in_shape: Sequence[int] | None = None, out_dim: int = 2) -> nn.Module:
        """Maps data to a vector (reconstructors, VAE encoders)."""
        return self.critic(in_shape, out_dim)

    def mlp(self, in_dim: int, out_dim: int, hidden: Sequence[int] | None = None) -> nn.Module:
        return mlp(in_dim, out_dim, self.hidden if hidden is None else hidden, self.activation)
