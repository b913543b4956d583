"""PacGAN (Lin et al., 2018): the discriminator judges m samples at once.

Per generator update, on a batch of n real samples:
  1. pack: the first (n // m) * m samples become n // m packs of m samples each,
     concatenated along the first data dimension (coordinates of 2-D points, channels of
     images); a pack is all real or all generated. When m does not divide n, the last
     n mod m real samples are left out, and G draws exactly (n // m) * m samples, so D
     and G see the same number of samples per side (510 of 512 for m = 3);
  2. update D on packs,  L_D = -log D(pack(x)) - log(1 - D(pack(G(z))));
  3. update G,           L_G = -log D(pack(G(z))).
Nothing else changes from the GAN: only D's input layer is m times wider.
`simultaneous=True`: steps 2 and 3 from one draw and the same D, as the authors' code
updates both nets (see `mcbench.methods.gan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from mcbench.errors import McbenchError
from mcbench.methods.blocks.losses import (
    check_simultaneous,
    d_loss,
    g_loss_nonsaturating,
    simultaneous_update,
)
from mcbench.plugin.method import Method, Problem, positive

if TYPE_CHECKING:
    from mcbench.plugin.protocol import Protocol


def pack(x: torch.Tensor, m: int, dim: int = 0) -> torch.Tensor:
    """(n, C, ...) -> (n // m, m * C, ...): consecutive groups of m samples, concatenated
    along the first data dimension; the last n mod m samples are dropped. `dim` is the
    samples' dimension, negative from the end (with replicas (R, n, C, ...) ->
    (R, n // m, m * C, ...) at dim 1)."""
    dim = dim % x.dim()
    k = x.shape[dim] // m
    lead, rest = x.shape[:dim], x.shape[dim + 2 :]
    return x.narrow(dim, 0, k * m).reshape(*lead, k, m * x.shape[dim + 1], *rest)


@dataclass
class PacGANConfig:
    m: int = 2  # samples per pack (the paper studies 2, 3 and 4)
    d_steps: int = 1  # discriminator updates per generator update
    simultaneous: bool = False  # the authors' code: D and G step from one forward pass

    def validate(self) -> None:
        positive("pacgan", m=self.m, d_steps=self.d_steps)
        check_simultaneous("pacgan", self.simultaneous, self.d_steps)
        if self.m < 2:  # one sample a pack packs nothing: it would train a plain GAN
            raise McbenchError(
                f"method 'pacgan': m must be at least 2 (m={self.m} is the plain GAN: `gan`)"
            )


class PacGAN(Method):
    name = "pacgan"
    Config = PacGANConfig
    aliases: ClassVar[dict[str, dict[str, Any]]] = {
        "pacgan2": {"m": 2},
        "pacgan3": {"m": 3},
        "pacgan4": {"m": 4},
    }
    defaults_from = (
        "paper (m = 2, 3, 4; only D's input changes); nets, Adam and batch from the "
        "protocol (PacGAN's own 2-D nets and Adam differ)"
    )
    vectorized = True

    @classmethod
    def check_protocol(cls, config: PacGANConfig, protocol: Protocol) -> None:
        """A pack holds m samples of one batch: m above the batch size leaves no pack
        (a batch counted in packs, PacGAN's code, always fills them)."""
        if not protocol.batch_in_packs and config.m > protocol.batch_size:
            raise McbenchError(
                f"method 'pacgan': m={config.m} is larger than the batch size "
                f"{protocol.batch_size} of protocol {protocol.name!r}: no pack would fill"
            )

    def __init__(self, problem: Problem, cfg: PacGANConfig) -> None:
        super().__init__(problem, cfg)
        if problem.batch_size < cfg.m:
            raise McbenchError(
                f"method 'pacgan': batch size {problem.batch_size} is smaller than m={cfg.m}"
            )
        first, *rest = problem.data_shape
        self.G = problem.generator(problem.latent_dim)
        self.D = problem.critic(in_shape=(cfg.m * first, *rest))
        self.opt_g = problem.adam(self.G.parameters(), problem.lr_g)
        self.opt_d = problem.adam(self.D.parameters(), problem.lr_d)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """Packs of m samples; the samples' dimension is the one before the data's."""
        return pack(x, self.cfg.m, dim=-1 - len(self.problem.data_shape))

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        m, size = self.cfg.m, self.num_samples(real)
        n = (size // m) * m  # samples per side that fill whole packs
        if n == 0:
            raise McbenchError(f"method 'pacgan': batch of {size} < m={m}")
        real_packs = self.pack(real)
        if self.cfg.simultaneous:
            return simultaneous_update(self, real_packs, self.G(self.randn(n)), self.pack)
        for _ in range(self.cfg.d_steps):
            fake = self.G(self.randn(n)).detach()
            loss_d = d_loss(self.D(real_packs), self.D(self.pack(fake)))
            self.minimize(self.opt_d, loss_d)

        loss_g = g_loss_nonsaturating(self.D(self.pack(self.G(self.randn(n)))))
        self.minimize(self.opt_g, loss_g)
        return {"d": loss_d.detach(), "g": loss_g.detach()}
