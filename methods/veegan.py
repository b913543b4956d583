"""VEEGAN (Srivastava et al., 2017): a reconstructor maps data back to the latent space.

Nets: generator G (z -> x), reconstructor F (x -> z), discriminator D(x, z) on pairs.
Per generator update (Algorithm 1 of the paper; D's logit estimates the log density
ratio of generated pairs (z, G(z)) to real pairs (F(x), x)):
  1. update D, generated pairs labelled 1 and real pairs 0:
        L_D = -log sigma(D(G(z), z)) - log(1 - sigma(D(x, F(x))))
  2. update G and F together on the paper's objective estimate
        O = mean D(G(z), z) + mean ||z - F(G(z))||^2
     (the logit term is a KL estimate that only G can move; the latent reconstruction
     term, summed over latent coordinates, trains F and keeps G from dropping codes).
F is deterministic (the l2 loss is a fixed-variance Gaussian p(z | x), so its mean is
what is learned); the D step comes first, as in the GAN method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mcbench.losses import d_loss
from mcbench.method import Method, Problem, positive


@dataclass
class VEEGANConfig:
    recon_weight: float = 1.0  # weight of ||z - F(G(z))||^2 (the paper's objective: 1)
    d_steps: int = 1  # discriminator updates per generator update

    def validate(self) -> None:
        positive("veegan", recon_weight=self.recon_weight, d_steps=self.d_steps)


class VEEGAN(Method):
    name = "veegan"
    Config = VEEGANConfig
    defaults_from = (
        "paper (objective: logit + unweighted l2 latent reconstruction); nets, latent size "
        "and Adam from the protocol"
    )

    def __init__(self, problem: Problem, cfg: VEEGANConfig) -> None:
        super().__init__(problem, cfg)
        self.G = problem.generator(problem.latent_dim)
        self.F = problem.encoder(out_dim=problem.latent_dim)
        self.D = problem.critic(extra_dim=problem.latent_dim)
        # G and F descend the same objective at the generator's lr; two Adams are one
        # Adam per parameter, kept apart so F can be trained alone (tests).
        self.opt_g = problem.adam(self.G.parameters(), problem.lr_g)
        self.opt_f = problem.adam(self.F.parameters(), problem.lr_g)
        self.opt_d = problem.adam(self.D.parameters(), problem.lr_d)

    def reconstruction(self, z: torch.Tensor, fake: torch.Tensor | None = None) -> torch.Tensor:
        """mean ||z - F(G(z))||^2, the latent reconstruction loss (`fake` = G(z) if given)."""
        fake = self.G(z) if fake is None else fake
        return (z - self.F(fake)).pow(2).flatten(1).sum(1).mean()

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        n = real.shape[0]
        for _ in range(self.cfg.d_steps):
            z = self.problem.noise(n)
            with torch.no_grad():
                fake, z_real = self.G(z), self.F(real)
            loss_d = d_loss(self.D(fake, z), self.D(real, z_real))
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()

        z = self.problem.noise(n)
        fake = self.G(z)
        logit = self.D(fake, z).mean()
        recon = self.reconstruction(z, fake)
        loss_gf = logit + self.cfg.recon_weight * recon
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_f.zero_grad(set_to_none=True)
        loss_gf.backward(inputs=[*self.G.parameters(), *self.F.parameters()])
        self.opt_g.step()
        self.opt_f.step()
        return {
            "d": loss_d.detach(),
            "g": loss_gf.detach(),
            "logit": logit.detach(),
            "recon": recon.detach(),
        }
