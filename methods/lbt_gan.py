"""LBT-GAN: LBT augmented with a discriminator (LBT paper, section 3.2).

LBT's maximum-likelihood signal covers modes but barely penalises samples between them
(MLE is zero-avoiding); a discriminator adds that penalty.

Per generator update:
  1. M estimator updates on generated samples (as in LBT)
  2. d_steps discriminator updates:  L_D = -log D(x) - log(1 - D(G(z)))
  3. K unrolled estimator steps on fresh samples G(z_k), then the generator update on
        L_G = lambda_G * (-log D(G(z_1))) - ELBO(x_real; phi_K(theta))
     lambda_G = 0.1 on 2-D data, 1 on images (paper, section 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mcbench.errors import McbenchError
from mcbench.methods.blocks.losses import d_loss, g_loss_nonsaturating
from mcbench.methods.lbt import AUTHORS_CODE, LBT, PAPER, LBTConfig
from mcbench.plugin.method import Problem, positive


@dataclass
class LBTGANConfig(LBTConfig):
    lambda_gan: float | None = None  # weight of the GAN loss; None: 0.1 on 2-D, 1 otherwise
    d_steps: int = 1  # discriminator updates per generator update (authors' code: 1)

    def validate(self, name: str = "lbt-gan") -> None:
        super().validate(name)
        positive(name, d_steps=self.d_steps)
        if self.lambda_gan is not None:
            try:
                self.lambda_gan = float(self.lambda_gan)
            except (TypeError, ValueError):
                raise McbenchError(
                    f"method {name!r}: lambda_gan={self.lambda_gan!r} is not a number"
                ) from None
            if self.lambda_gan < 0:
                raise McbenchError(f"method {name!r}: lambda_gan must be >= 0")


class LBTGAN(LBT):
    name = "lbt-gan"
    Config = LBTGANConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": PAPER, "authors-code": AUTHORS_CODE}
    defaults_from = "LBT authors' code (preset authors-code); lambda_G from paper section 5"

    def __init__(self, problem: Problem, cfg: LBTGANConfig) -> None:
        super().__init__(problem, cfg)
        self.D = problem.critic()
        self.opt_d = problem.adam(self.D.parameters(), problem.lr_d, self.betas)
        default = 0.1 if problem.family == "mixture2d" else 1.0
        self.lambda_gan = default if cfg.lambda_gan is None else cfg.lambda_gan

    def generator_loss(self, real: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = real.shape[self.problem.batch_dim]
        fakes = self.fresh_fakes(n, self.cfg.K)
        for i in range(self.cfg.d_steps):
            fake = fakes[0].detach() if i == 0 else self.sample(n)
            loss_d = d_loss(self.D(real), self.D(fake))
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.sum().backward()
            self.opt_d.step()
        loss_gan = g_loss_nonsaturating(self.D(fakes[0]))
        loss_elbo = self.unrolled_real_loss(real, fakes)
        loss = self.lambda_gan * loss_gan + loss_elbo
        logs = {"elbo_real_unrolled": -loss_elbo.detach(), "d": loss_d.detach()}
        return loss, {**logs, "g_gan": loss_gan.detach()}
