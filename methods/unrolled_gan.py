"""Unrolled GAN (Metz et al., 2016): the generator plays against a look-ahead discriminator.

Per generator update, on one batch (real x, fake G(z)), with the saddle objective
f(G, theta_D) = L_D = -log D(x) - log(1 - D(G(z))) written as the discriminator's loss:
  1. theta_D^K = K Adam steps of D on L_D, taken differentiably from D's current weights
     and its live optimiser's moments; theta_D^K is a function of G through G(z);
  2. G descends  L_G = -L_D(G, theta_D^K)  (minimax form, as in the paper and its 2-D
     demo; its real-data term reaches G through theta_D^K), differentiated through the
     K steps, Adam's second moment included (the demo differentiates the whole update);
  3. D takes its ordinary Adam step on L_D from its current weights. Steps 2 and 3 start
     from the same D, the paper's simultaneous update rule.
With K = 0 this is the plain GAN. `g_loss="nonsaturating"` uses -log D_K(G(z)) instead.

Replicas: the losses are per seed and the unroll differentiates their sum, so each
seed's look-ahead is its own run's (Adam is elementwise, all seeds share its step).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch

from mcbench.errors import McbenchError
from mcbench.methods.blocks import functional as fn
from mcbench.methods.blocks.losses import d_loss, g_loss_nonsaturating
from mcbench.methods.blocks.memory import memory_available, size_text
from mcbench.methods.blocks.unroll import AdamState, bind, unroll
from mcbench.plugin.method import FunctionalUpdate, Method, Problem

G_LOSSES = ("minimax", "nonsaturating")


@dataclass
class UnrolledGANConfig:
    K: int = 5  # unrolled discriminator steps (Metz et al.'s 2-D demo)
    g_loss: str = "minimax"  # "minimax": -L_D at theta_D^K (paper); or "nonsaturating"
    # Differentiate Adam's second moment through the unroll (exact derivative, as the
    # demo's graph rewrite does); False detaches it, as the LBT authors' code does.
    second_moment_grad: bool = True

    def validate(self) -> None:
        if self.K < 0:
            raise McbenchError(f"method 'unrolled-gan': K must be >= 0, got {self.K}")
        if self.g_loss not in G_LOSSES:
            raise McbenchError(
                f"method 'unrolled-gan': g_loss must be one of {', '.join(G_LOSSES)}, "
                f"got {self.g_loss!r}"
            )


class UnrolledGAN(Method):
    name = "unrolled-gan"
    Config = UnrolledGANConfig
    defaults_from = (
        "paper's 2-D demo (K = 5, minimax G loss, Adam unrolled with moments); "
        "nets and Adam settings from the protocol, which match the demo"
    )
    vectorized = True
    depth_param = "K"

    @classmethod
    def check_protocol(cls, config: UnrolledGANConfig, protocol: Any) -> None:
        """Refuse an unroll that cannot fit in memory (e.g. K=1e9) before any work: each
        of the K differentiable steps keeps D's activations on two batches and three
        parameter-sized tensors (weights, Adam moments) for the backward pass."""
        hidden = protocol.d_hidden or protocol.hidden
        batch = protocol.batch_size
        width = 2 if protocol.family == "mixture2d" else 1  # images: a lower bound
        params = sum(a * b for a, b in itertools.pairwise([width, *hidden, 1]))
        need = 4 * config.K * (2 * batch * sum(hidden) + 3 * params)
        have, where = memory_available()
        if need > have:
            raise McbenchError(
                f"method {cls.name!r}: K={config.K} needs at least {size_text(need)} "
                f"(K x (2 batches x {batch} x {sum(hidden)} activations + 3 x {params} "
                f"parameters) x 4 B), more than the {size_text(have)} of {where}"
            )

    def __init__(self, problem: Problem, cfg: UnrolledGANConfig) -> None:
        super().__init__(problem, cfg)
        self.G = problem.generator(problem.latent_dim)
        self.D = problem.critic()
        self.opt_g = problem.adam(self.G.parameters(), problem.lr_g)
        self.opt_d = problem.adam(self.D.parameters(), problem.lr_d)

    def generator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """The generator's objective at the look-ahead discriminator theta_D^K.

        Differentiable with respect to G (through `fake`, also inside the unroll); D's
        own weights and optimiser are left untouched. A scalar, or (R,) with replicas.
        """
        state = AdamState.from_optimizer(self.D, self.opt_d)
        params = unroll(
            self.D,
            lambda d: d_loss(d(real), d(fake)),
            state,
            self.cfg.K,
            create_graph=True,
            differentiate_second_moment=self.cfg.second_moment_grad,
        )
        d_k = bind(self.D, params)
        if self.cfg.g_loss == "minimax":
            return -d_loss(d_k(real), d_k(fake))
        return g_loss_nonsaturating(d_k(fake))

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        fake = self.G(self.randn(self.num_samples(real)))

        # 1-2. G's step, its gradient through K look-ahead steps of D (D left untouched)
        loss_g = self.generator_loss(real, fake)
        self.minimize(self.opt_g, loss_g, inputs=list(self.G.parameters()))

        # 3. D's ordinary step from the same starting point, on the same (detached) fakes
        loss_d = d_loss(self.D(real), self.D(fake.detach()))
        self.minimize(self.opt_d, loss_d)
        return {"d": loss_d.detach(), "g": loss_g.detach()}

    def functional_update(self) -> FunctionalUpdate:
        """`step` as one pure function, for `mcbench run --compile`: the look-ahead is K
        nested `torch.func.grad` steps of D's Adam. Equal to `step` to rounding
        (tests/test_compiled.py)."""
        G, D, cfg = self.G, self.D, self.cfg
        step_g, step_d = fn.adam(self.opt_g), fn.adam(self.opt_d)
        look_ahead = fn.adam(self.opt_d, second_moment=cfg.second_moment_grad)

        loss_d = fn.critic_loss(D)
        grad_d = fn.grad_and_value(loss_d)

        def loss_g(p_g, p_d, s_d, real, z):  # 1-2. G's objective at theta_D^K
            fake = fn.call(G, p_g, z)
            for _ in range(cfg.K):
                p_d, s_d = look_ahead(p_d, grad_d(p_d, real, fake)[0], s_d)
            if cfg.g_loss == "minimax":
                return -loss_d(p_d, real, fake)
            return g_loss_nonsaturating(fn.call(D, p_d, fake))

        grad_g = fn.grad_and_value(loss_g)

        def update(params, moments, real, noise):
            (z,) = noise
            p_g, p_d, s_d = params["G"], params["D"], moments["opt_d"]
            g, lg = grad_g(p_g, p_d, s_d, real, z)
            new_g, s_g = step_g(p_g, g, moments["opt_g"])
            # 3. D's ordinary step from the same D, on the same fakes (G before its step)
            g, ld = grad_d(p_d, real, fn.call(G, p_g, z).detach())
            p_d, s_d = step_d(p_d, g, s_d)
            return {"G": new_g, "D": p_d}, {"opt_g": s_g, "opt_d": s_d}, {"d": ld, "g": lg}

        def noise(n: int) -> list[torch.Tensor]:  # as `step` draws it
            return [self.randn(n)]

        return FunctionalUpdate(update, noise, {"opt_g": "G", "opt_d": "D"})
