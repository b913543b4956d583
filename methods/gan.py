"""GAN (Goodfellow et al., 2014) with the non-saturating generator loss.

Per generator update:
  1. for d_steps: update D to tell real from fake,  L_D = -log D(x) - log(1 - D(G(z)))
  2. update G to fool D,                             L_G = -log D(G(z))
With `simultaneous=True` (PacGAN's code, whose Blocks/Theano graph computes both updates
from one forward pass): one draw G(z); G's gradient of L_G and D's of L_D are both taken
at the current weights, then both nets step (d_steps must be 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mcbench.errors import McbenchError
from mcbench.methods.blocks import functional as fn
from mcbench.methods.blocks.losses import (
    check_simultaneous,
    d_loss,
    g_loss_nonsaturating,
    simultaneous_update,
)
from mcbench.plugin.method import FunctionalUpdate, Method, Problem, positive


@dataclass
class GANConfig:
    d_steps: int = 1  # discriminator updates per generator update
    simultaneous: bool = False  # PacGAN's code: D and G step from one forward pass

    def validate(self) -> None:
        positive("gan", d_steps=self.d_steps)
        check_simultaneous("gan", self.simultaneous, self.d_steps)


class GAN(Method):
    name = "gan"
    Config = GANConfig
    defaults_from = "protocol (Goodfellow et al. give no 2-D settings)"
    vectorized = True

    def __init__(self, problem: Problem, cfg: GANConfig) -> None:
        super().__init__(problem, cfg)
        self.G = problem.generator(problem.latent_dim)
        self.D = problem.critic()
        self.opt_g = problem.adam(self.G.parameters(), problem.lr_g)
        self.opt_d = problem.adam(self.D.parameters(), problem.lr_d)

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.num_samples(real)
        if self.cfg.simultaneous:
            return simultaneous_update(self, real, self.G(self.randn(n)))
        for _ in range(self.cfg.d_steps):
            fake = self.G(self.randn(n)).detach()
            loss_d = d_loss(self.D(real), self.D(fake))
            self.minimize(self.opt_d, loss_d)

        loss_g = g_loss_nonsaturating(self.D(self.G(self.randn(n))))
        self.minimize(self.opt_g, loss_g)
        return {"d": loss_d.detach(), "g": loss_g.detach()}

    def functional_update(self) -> FunctionalUpdate:
        """`step` as one pure function, for `mcbench run --compile` (alternating updates
        only); equal to `step` to rounding (tests/test_compiled.py)."""
        if self.cfg.simultaneous:
            raise McbenchError("method 'gan': --compile supports alternating updates only")
        G, D, d_steps = self.G, self.D, self.cfg.d_steps
        step_d, step_g = fn.adam(self.opt_d), fn.adam(self.opt_g)

        def loss_g(p_g, p_d, z):
            return g_loss_nonsaturating(fn.call(D, p_d, fn.call(G, p_g, z)))

        grad_d = fn.grad_and_value(fn.critic_loss(D))
        grad_g = fn.grad_and_value(loss_g)

        def update(params, moments, real, noise):
            p_g, p_d, s_d = params["G"], params["D"], moments["opt_d"]
            for z in noise[:d_steps]:
                g, d = grad_d(p_d, real, fn.call(G, p_g, z).detach())
                p_d, s_d = step_d(p_d, g, s_d)
            g, loss = grad_g(p_g, p_d, noise[d_steps])
            p_g, s_g = step_g(p_g, g, moments["opt_g"])
            return {"G": p_g, "D": p_d}, {"opt_g": s_g, "opt_d": s_d}, {"d": d, "g": loss}

        def noise(n: int) -> list[torch.Tensor]:  # in the order `step` draws it
            return [self.randn(n) for _ in range(d_steps + 1)]

        return FunctionalUpdate(update, noise, {"opt_g": "G", "opt_d": "D"})
