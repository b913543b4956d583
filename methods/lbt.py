"""LBT: Learning by Teaching (Du, Xu, Li, Zhu, Zhang; ICLR 2019 submission, Algorithm 1).

An implicit generator G teaches an explicit density estimator E (a VAE): E fits G's
samples, and G is trained so that E, after learning from them, explains the real data.

Per generator update:
  1. M estimator updates:  phi <- Adam(phi, grad -ELBO(G(z); phi)),  fresh z each
  2. K unrolled estimator steps from phi on fresh samples G(z_k), with E's own Adam
     update (moments carried, second moment not differentiated): phi_K(theta)
  3. generator update:     theta <- Adam(theta, grad_theta -ELBO(x_real; phi_K(theta)))
     (global-norm clipped in the authors' code)

Presets: `authors-code` (the default: the configuration that produced the published 2-D
results) and `paper` (K=5, M=15, Adam default betas, no clipping). In the authors' code an
"estimator update" is itself K Adam steps at 3x the estimator lr, so its 2 updates are
M = 2K = 10 single Adam steps here; the unrolled steps run at 1x.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mcbench.errors import McbenchError
from mcbench.methods.blocks.unroll import AdamState, unroll
from mcbench.methods.blocks.vae import VAE
from mcbench.plugin.method import Method, Problem, positive


@dataclass
class LBTConfig:
    K: int = 5  # unrolled estimator steps per generator update
    M: int = 10  # estimator Adam steps per generator update (authors: 2 updates x K)
    est_lr_mult: float = 3.0  # estimator updates run at est_lr_mult x lr_d
    unroll_lr_mult: float = 1.0  # unrolled steps run at unroll_lr_mult x lr_d
    vae_latent: int = 32  # VAE latent size (authors' code)
    decoder_var: float = 1e-3  # decoder variance, fixed unless learn_var
    learn_var: bool = False  # learn a per-dimension decoder variance instead
    clip_norm: float = 5.0  # generator gradient global-norm clip; 0 turns it off
    adam_defaults: bool = False  # Adam betas (0.9, 0.999) instead of the protocol's

    def validate(self, name: str = "lbt") -> None:
        positive(
            name,
            K=self.K,
            M=self.M,
            est_lr_mult=self.est_lr_mult,
            unroll_lr_mult=self.unroll_lr_mult,
            vae_latent=self.vae_latent,
            decoder_var=self.decoder_var,
        )
        if self.clip_norm < 0:
            raise McbenchError(f"method {name!r}: clip_norm must be >= 0 (0: no clipping)")


PAPER = {"K": 5, "M": 15, "est_lr_mult": 1.0, "clip_norm": 0.0, "adam_defaults": True}
AUTHORS_CODE = {
    "K": 5,
    "M": 10,
    "est_lr_mult": 3.0,
    "unroll_lr_mult": 1.0,
    "vae_latent": 32,
    "decoder_var": 1e-3,
    "learn_var": False,
    "clip_norm": 5.0,
    "adam_defaults": False,
}


class LBT(Method):
    name = "lbt"
    Config = LBTConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": PAPER, "authors-code": AUTHORS_CODE}
    defaults_from = "LBT authors' code (preset authors-code); preset paper: section 5"
    replicas = True

    def __init__(self, problem: Problem, cfg: LBTConfig) -> None:
        super().__init__(problem, cfg)
        self.betas = (0.9, 0.999) if cfg.adam_defaults else problem.betas
        betas = self.betas
        self.G = problem.generator(problem.latent_dim)
        self.E = VAE(problem, cfg.vae_latent, cfg.decoder_var, cfg.learn_var)
        self.opt_g = problem.adam(self.G.parameters(), problem.lr_g, betas)
        self.opt_e = problem.adam(self.E.parameters(), cfg.est_lr_mult * problem.lr_d, betas)
        self.unroll_lr = cfg.unroll_lr_mult * problem.lr_d
        # Diagnostics draw from their own stream (seeded once from the method's) and a
        # real batch fixed at construction, so evaluating never shifts training streams.
        self.diag_rng = problem.spawn_rng()
        self.diag_real = problem.sample_real(problem.batch_size) if problem.sample_real else None

    # -- the three phases of Algorithm 1 ------------------------------------------------

    def fit_estimator(self, n: int) -> torch.Tensor:
        """M Adam steps of E on fresh generated samples; returns the last -ELBO."""
        p, m = self.problem, self.cfg.M
        with torch.no_grad():  # one generator pass for all M batches
            fakes = p.chunk(self.G(p.noise(m * n)), m)
        eps = p.chunk(self.E.noise(p, m * n), m)
        for x, e in zip(fakes, eps, strict=True):
            loss_e = -p.mean(self.E(x, e))
            self.opt_e.zero_grad(set_to_none=True)
            loss_e.sum().backward()
            self.opt_e.step()
        return loss_e.detach()

    def fresh_fakes(self, n: int, k: int) -> list[torch.Tensor]:
        """k batches of n generated samples, differentiable w.r.t. G, in one pass."""
        return self.problem.chunk(self.G(self.problem.noise(k * n)), k)

    def unrolled_real_loss(self, real: torch.Tensor, fakes: list[torch.Tensor]) -> torch.Tensor:
        """-ELBO(real; phi_K(theta)), one unrolled step per batch in `fakes` (K of them):
        differentiable w.r.t. G through its samples."""
        p, k = self.problem, len(fakes)
        n = real.shape[p.batch_dim]
        eps = p.chunk(self.E.noise(p, k * n + n), k + 1)
        batches = iter(zip(fakes, eps[:k], strict=True))
        state = dataclasses.replace(AdamState.from_optimizer(self.E, self.opt_e), lr=self.unroll_lr)
        params = unroll(self.E, lambda f: -p.mean(f(*next(batches))), state, k)
        return -p.mean(torch.func.functional_call(self.E, params, (real, eps[k])))

    def generator_loss(self, real: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss G descends (LBT: the unrolled real-data -ELBO) and what to log."""
        n = real.shape[self.problem.batch_dim]
        loss = self.unrolled_real_loss(real, self.fresh_fakes(n, self.cfg.K))
        return loss, {"elbo_real_unrolled": -loss.detach()}

    def generator_grads(self, real: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
        """Gradients of the generator loss w.r.t. G's parameters (E's left untouched);
        with replicas of the sum of per-replica losses, i.e. each replica's own."""
        loss, logs = self.generator_loss(real)
        return torch.autograd.grad(loss.sum(), list(self.G.parameters())), logs

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        loss_e = self.fit_estimator(real.shape[self.problem.batch_dim])
        grads, logs = self.generator_grads(real)
        for prm, g in zip(self.G.parameters(), grads, strict=True):
            prm.grad = g
        if self.cfg.clip_norm > 0:
            self.problem.clip_grad_norm_(self.G.parameters(), self.cfg.clip_norm)
        self.opt_g.step()
        return {"elbo_fake": -loss_e, **logs}

    # -- learning curves (paper, workshop version Fig. 4) -----------------------------

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float | torch.Tensor]:
        """The estimator's ELBO on a fresh generated batch and on real data: floats, or
        (R,) tensors (one value per replica) with replicas."""
        p, n = self.problem, self.problem.batch_size
        fake = self.G(p.noise(n, rng=self.diag_rng))
        out = {"elbo_generated": p.mean(self.E(fake, self.E.noise(p, n, self.diag_rng)))}
        if self.diag_real is not None:
            eps = self.E.noise(p, self.diag_real.shape[p.batch_dim], self.diag_rng)
            out["elbo_real"] = p.mean(self.E(self.diag_real, eps))
        if p.replicas is None:
            return {k: float(v) for k, v in out.items()}
        return out
