"""LBT-GAN: LBT augmented with a discriminator (LBT paper, section 3.2).

LBT's maximum-likelihood signal covers modes but barely penalises samples between them
(MLE is zero-avoiding); a discriminator adds that penalty.

Per generator update:
  1. M estimator updates on generated samples (as in LBT)
  2. d_steps discriminator updates:  L_D = -log D(x) - log(1 - D(G(z)))
  3. K unrolled estimator steps on fresh samples G(z_k), then the generator update on
        L_G = lambda_G * (-log D(G(z_1))) - ELBO(x_real; phi_K(theta))
     lambda_G = 0.1 on 2-D data, 1 on images (paper, section 5).

Options for the authors' Stacked MNIST code (LBT-GAN_smnist.py; class defaults off, on
under preset `authors-code` on Stacked MNIST via `per_dataset`, see `mcbench.methods.lbt`):
  warmup         the first `warmup` updates train the GAN alone: no estimator step, no
                 ELBO term (their loop: `if i > 3000` from i = 0, so 3,001 updates)
  fresh_samples  the discriminator step and the GAN term each draw fresh generator
                 samples (their `samples_gen_gan`, run in separate session calls), not
                 the first unrolled batch; during the warm-up there is no unrolled batch,
                 so they draw fresh samples whatever this says
The warm-up's updates are counted (`updates`, checkpointed). A CUDA-graph capture during
the warm-up is refused (it would replay the GAN-only update forever): eager instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mcbench.errors import McbenchError
from mcbench.methods.blocks import functional as fn
from mcbench.methods.blocks.losses import d_loss, g_loss_nonsaturating
from mcbench.methods.lbt import AUTHORS_CODE, LBT, PAPER, LBTConfig
from mcbench.plugin.method import FunctionalUpdate, Problem, positive


@dataclass
class LBTGANConfig(LBTConfig):
    lambda_gan: float | None = None  # weight of the GAN loss; None: 0.1 on 2-D, 1 otherwise
    d_steps: int = 1  # discriminator updates per generator update (authors' code: 1)
    warmup: int = 0  # GAN-only updates first (no estimator, no ELBO); smnist code: 3001
    fresh_samples: bool = False  # D step and GAN term on fresh samples (smnist code)

    def validate(self, name: str = "lbt-gan") -> None:
        super().validate(name)
        positive(name, d_steps=self.d_steps)
        if self.warmup < 0:
            raise McbenchError(f"method {name!r}: warmup must be >= 0, got {self.warmup}")
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
        self.reinitialize(self.D)
        self.opt_d = problem.adam(self.D.parameters(), problem.lr_d, self.betas)
        default = 0.1 if problem.family == "mixture2d" else 1.0
        self.lambda_gan = default if cfg.lambda_gan is None else cfg.lambda_gan
        self.updates = 0  # generator updates so far (for the warm-up; checkpointed)

    @property
    def warming_up(self) -> bool:
        return self.updates < self.cfg.warmup

    def fit_estimator(self, n: int) -> torch.Tensor:
        """As LBT's, except during the warm-up: no estimator step (a zero -ELBO logged)."""
        if self.warming_up:
            r = self.problem.replicas
            return torch.zeros(() if r is None else (r,), device=self.problem.device)
        return super().fit_estimator(n)

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        loss_d = d_loss(self.D(real), self.D(fake.detach()))
        self.minimize(self.opt_d, loss_d)
        return loss_d.detach()

    def generator_loss(self, real: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n, cfg = self.num_samples(real), self.cfg
        warm = self.warming_up
        if cfg.fresh_samples or warm:
            for _ in range(cfg.d_steps):
                with torch.no_grad():  # training-mode G, as their `samples_gen_gan`
                    fake = self.G(self.randn(n))
                loss_d = self.discriminator_step(real, fake)
            fakes = [] if warm else self.fresh_fakes(n, cfg.K)
            gan_fake = self.G(self.randn(n))
        else:
            fakes = self.fresh_fakes(n, cfg.K)
            for i in range(cfg.d_steps):
                loss_d = self.discriminator_step(real, fakes[0] if i == 0 else self.sample(n))
            gan_fake = fakes[0]
        loss_gan = g_loss_nonsaturating(self.D(gan_fake))
        if warm:
            loss, elbo = self.lambda_gan * loss_gan, torch.zeros_like(loss_gan.detach())
        else:
            loss_elbo = self.unrolled_real_loss(real, fakes)
            loss, elbo = self.lambda_gan * loss_gan + loss_elbo, -loss_elbo.detach()
        logs = {"elbo_real_unrolled": elbo, "d": loss_d, "g_gan": loss_gan.detach()}
        if cfg.warmup > 0:  # the authors' use_E flag: 0 during the warm-up
            logs["elbo_weight"] = torch.full_like(elbo, 0.0 if warm else 1.0)
        return loss, logs

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Checkpoints written before the warm-up existed hold no counter: they ran none."""
        super().load_extra_state({"value.updates": 0, **state})

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
        if self.warming_up and capturing:
            # A captured graph would replay the warm-up branch forever; the harness
            # falls back to eager updates (and records why).
            raise McbenchError(f"method {self.name!r}: the warm-up cannot be graph-captured")
        logs = super().step(real)
        if self.warming_up:  # counts to the end of the warm-up only, then stays fixed
            self.updates += 1
        return logs

    def functional_update(self) -> FunctionalUpdate:
        """`step` as one pure function, for `mcbench run --compile`: LBT's phases
        (`LBT.functional_phases`) with the discriminator's steps and the GAN term in the
        generator's loss. Runs with a warm-up are refused (its branch changes with the
        update count). Equal to `step` to rounding (tests/test_compiled.py)."""
        cfg, G, D, K = self.cfg, self.G, self.D, self.cfg.K
        if cfg.warmup > 0:
            raise McbenchError(f"method {self.name!r}: --compile does not take warmup > 0")
        phase, step_g = self.functional_phases(), self.functional_step_g()
        step_d, lam = fn.adam(self.opt_d), self.lambda_gan

        grad_d = fn.grad_and_value(fn.critic_loss(D))

        def generator_loss(p_g, p_e, s_e, p_d, s_d, real, z_d, z_unroll, z_gan, eps):
            fakes = self.split(fn.call(G, p_g, z_unroll), K)
            for i, z in enumerate(z_d):  # 2. D steps on detached samples
                fake = fakes[0] if (i == 0 and not cfg.fresh_samples) else fn.call(G, p_g, z)
                g, ld = grad_d(p_d, real, fake.detach())
                p_d, s_d = step_d(p_d, g, s_d)
            gan_fake = fn.call(G, p_g, z_gan) if cfg.fresh_samples else fakes[0]
            loss_gan = g_loss_nonsaturating(fn.call(D, p_d, gan_fake))
            loss_elbo = phase.unrolled_real_loss(p_e, s_e, fakes, real, eps)  # 3.
            logs = {"elbo_real_unrolled": -loss_elbo.detach(), "d": ld, "g_gan": loss_gan}
            return lam * loss_gan + loss_elbo, (p_d, s_d, logs)

        def summed(*args):
            loss, aux = generator_loss(*args)
            return loss.sum(), aux

        grad_g = torch.func.grad(summed, has_aux=True)

        def update(params, moments, real, noise):
            z_fit, e_fit, z_d, z_unroll, z_gan, e_unroll = noise
            p_g = params["G"]
            p_e, s_e, loss_e = phase.fit(p_g, params["E"], moments["opt_e"], z_fit, e_fit)
            g, (p_d, s_d, logs) = grad_g(
                p_g, p_e, s_e, params["D"], moments["opt_d"], real, z_d, z_unroll, z_gan, e_unroll
            )
            p_g, s_g = step_g(p_g, g, moments["opt_g"])
            logs = {"elbo_fake": -loss_e, **logs}
            return (
                {"G": p_g, "E": p_e, "D": p_d},
                {"opt_g": s_g, "opt_e": s_e, "opt_d": s_d},
                logs,
            )

        def noise(n: int) -> list:  # in the order `step` draws it
            latent = self.E.latent_dim
            z_fit, e_fit = self.randn(cfg.M * n), self.randn(cfg.M * n, latent)
            if cfg.fresh_samples:  # D's samples, the unroll's, the GAN term's
                z_d = [self.randn(n) for _ in range(cfg.d_steps)]
                z_unroll, z_gan = self.randn(K * n), self.randn(n)
            else:  # the unroll's (its first batch also D's and the GAN term's), then D's
                z_unroll = self.randn(K * n)
                z_d = [z_unroll, *(self.randn(n) for _ in range(cfg.d_steps - 1))]
                z_gan = z_unroll
            return [z_fit, e_fit, z_d, z_unroll, z_gan, self.randn(K * n + n, latent)]

        return FunctionalUpdate(update, noise, {"opt_g": "G", "opt_e": "E", "opt_d": "D"})
