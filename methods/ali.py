"""ALI / BiGAN (Dumoulin et al., 2017; Donahue et al., 2017): a discriminator on (x, z).

Nets: generator G (z -> x), encoder E (x -> z), discriminator D(x, z) on joint pairs.
Per generator update:
  1. update D, real pairs (x, E(x)) labelled 1, generated pairs (G(z), z) labelled 0:
        L_D = -log sigma(D(x, E(x))) - log(1 - sigma(D(G(z), z)))
  2. update G and E together with the labels swapped (the non-saturating form both
     papers train with):
        L_GE = -log sigma(D(G(z), z)) - log(1 - sigma(D(x, E(x))))
At the optimum the two joints p(x) q(z|x) and p(z) p(x|z) match, so E inverts G.
The encoder is deterministic, as in BiGAN (ALI's is a reparametrised Gaussian).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mcbench.methods.blocks.losses import d_loss
from mcbench.plugin.method import Method, Problem, positive


@dataclass
class ALIConfig:
    d_steps: int = 1  # discriminator updates per generator update

    def validate(self) -> None:
        positive("ali", d_steps=self.d_steps)


class ALI(Method):
    name = "ali"
    Config = ALIConfig
    defaults_from = (
        "papers (joint (x, z) discriminator, swapped-label G/E loss, deterministic BiGAN "
        "encoder); nets and Adam from the protocol, G and E at the generator's lr"
    )
    vectorized = True

    def __init__(self, problem: Problem, cfg: ALIConfig) -> None:
        super().__init__(problem, cfg)
        self.G = problem.generator(problem.latent_dim)
        self.E = problem.encoder(out_dim=problem.latent_dim)
        self.D = problem.critic(extra_dim=problem.latent_dim)
        self.opt_ge = problem.adam([*self.G.parameters(), *self.E.parameters()], problem.lr_g)
        self.opt_d = problem.adam(self.D.parameters(), problem.lr_d)

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.num_samples(real)
        for _ in range(self.cfg.d_steps):
            z = self.randn(n)
            with torch.no_grad():
                fake, z_real = self.G(z), self.E(real)
            loss_d = d_loss(self.D(real, z_real), self.D(fake, z))
            self.minimize(self.opt_d, loss_d)

        z = self.randn(n)
        loss_ge = d_loss(self.D(self.G(z), z), self.D(real, self.E(real)))
        self.minimize(self.opt_ge, loss_ge, inputs=[*self.G.parameters(), *self.E.parameters()])
        return {"d": loss_d.detach(), "g": loss_ge.detach()}
