"""VEEGAN (Srivastava et al., 2017): a reconstructor maps data back to the latent space.

Nets: generator G (z -> x), reconstructor F (x -> z), discriminator D(x, z) on pairs.
Per generator update (Algorithm 1 of the paper; D's logit estimates the log density
ratio of generated pairs (z, G(z)) to real pairs (z_F, x), z_F ~ p_F(z | x)):
  1. update D, generated pairs labelled 1 and real pairs 0:
        L_D = -log sigma(D(G(z), z)) - log(1 - sigma(D(x, z_F)))
  2. update G and F together on the paper's objective estimate
        O = mean D(G(z), z) + mean d(z, G(z)),   d(z, x) = -log p_F(z | x) + const
     (the logit term is a KL estimate that only G can move; the latent reconstruction
     term trains F and keeps G from dropping codes).

The reconstructor p_F(z | x) (`reconstructor`):
  - "l2" (default, the paper's text): F is deterministic, z_F = F(x) and
    d = ||z - F(G(z))||^2 summed over latent coordinates (a fixed-variance Gaussian);
  - "gaussian" (the authors' 2-D code, as its public ports show): F outputs a mean and
    a softplus scale per coordinate, z_F is a sample, d is the Gaussian negative
    log-likelihood. Coordinates that x cannot explain can then match the N(0, I) prior,
    so D cannot win on them alone (it can with "l2" when the latent is much wider
    than the data: the protocol's latent is 256-d, the data 2-d).
The D step comes first, as in the GAN method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mcbench.errors import McbenchError
from mcbench.methods.blocks.losses import d_loss
from mcbench.plugin.method import Method, Problem, positive

RECONSTRUCTORS = ("l2", "gaussian")


@dataclass
class VEEGANConfig:
    reconstructor: str = "l2"  # "l2": paper's deterministic F; "gaussian": authors' code
    recon_weight: float = 1.0  # weight of the reconstruction term (the paper's: 1)
    d_steps: int = 1  # discriminator updates per generator update

    def validate(self) -> None:
        if self.reconstructor not in RECONSTRUCTORS:
            raise McbenchError(
                f"method 'veegan': reconstructor must be one of {', '.join(RECONSTRUCTORS)}, "
                f"got {self.reconstructor!r}"
            )
        positive("veegan", recon_weight=self.recon_weight, d_steps=self.d_steps)


class VEEGAN(Method):
    name = "veegan"
    Config = VEEGANConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"authors-code": {"reconstructor": "gaussian"}}
    defaults_from = (
        "paper (objective: logit + unweighted l2 latent reconstruction; preset "
        "authors-code: Gaussian reconstructor); nets, latent size and Adam from the protocol"
    )
    vectorized = True

    def __init__(self, problem: Problem, cfg: VEEGANConfig) -> None:
        super().__init__(problem, cfg)
        k = problem.latent_dim
        self.G = problem.generator(k)
        self.F = problem.encoder(out_dim=k if cfg.reconstructor == "l2" else 2 * k)
        self.D = problem.critic(extra_dim=k)
        # G and F descend the same objective at the generator's lr; two Adams are one
        # Adam per parameter, kept apart so F can be trained alone (tests).
        self.opt_g = problem.adam(self.G.parameters(), problem.lr_g)
        self.opt_f = problem.adam(self.F.parameters(), problem.lr_g)
        self.opt_d = problem.adam(self.D.parameters(), problem.lr_d)

    def _mean_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.F(x)
        if self.cfg.reconstructor == "l2":
            return out, None
        mean, raw = out.chunk(2, dim=-1)
        return mean, F.softplus(raw) + 1e-4

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """z_F ~ p_F(z | x): F(x), or a sample of the Gaussian reconstructor."""
        mean, scale = self._mean_scale(x)
        if scale is None:
            return mean
        return mean + scale * self.randn(self.num_samples(x), mean.shape[-1])

    def reconstruction(self, z: torch.Tensor, fake: torch.Tensor | None = None) -> torch.Tensor:
        """mean d(z, G(z)) = -log p_F(z | G(z)) + const (`fake` = G(z) if given), per seed."""
        mean, scale = self._mean_scale(self.G(z) if fake is None else fake)
        if scale is None:
            return self.mean((z - mean).pow(2).sum(-1))
        nll = 0.5 * ((z - mean) / scale).pow(2) + scale.log() + 0.5 * math.log(2 * math.pi)
        return self.mean(nll.sum(-1))

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.num_samples(real)
        for _ in range(self.cfg.d_steps):
            z = self.randn(n)
            with torch.no_grad():
                fake, z_real = self.G(z), self.reconstruct(real)
            loss_d = d_loss(self.D(fake, z), self.D(real, z_real))
            self.minimize(self.opt_d, loss_d)

        z = self.randn(n)
        fake = self.G(z)
        logit = self.mean(self.D(fake, z))
        recon = self.reconstruction(z, fake)
        loss_gf = logit + self.cfg.recon_weight * recon
        gf = [*self.G.parameters(), *self.F.parameters()]
        self.minimize((self.opt_g, self.opt_f), loss_gf, inputs=gf)
        losses = {"d": loss_d, "g": loss_gf, "logit": logit, "recon": recon}
        return {k: v.detach() for k, v in losses.items()}
