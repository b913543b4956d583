"""GAN-SI (semi-implicit generator poster): a GAN with a semi-implicit likelihood regulariser.

The generator is semi-implicit: implicit step theta = T_phi(z) (the protocol's generator),
explicit step x ~ p(x | theta). Per generator update, with theta_j = T_phi(z_j),
j = 1..M (one batch) and the real batch x_1..x_N:
  1. update D on theta as in a GAN (poster eq. 3):
        L_D = -log D(x) - log(1 - D(theta))
  2. update G on the GAN loss plus lambda times the SIG loss (eq. 4 with eq. 1's
     finite-mixture estimate of the marginal likelihood):
        L_G = -log D(theta) + lambda * H_M,
        H_M = -(1/N) sum_i log (1/M) sum_j p(x_i | theta_j).

Choices the poster leaves open, made here and stated:
  - p(x | theta) = N(x; theta, sigma^2 I), the RBF kernel of the poster's Theorem 1, with
    a fixed bandwidth `sigma`; theta has the data's shape, so G is unchanged;
  - M = the generator batch (the same theta's the discriminator judges);
  - evaluated samples are theta = T_phi(z), what D judges in eq. (3)-(4);
  - lambda = 1 and sigma = 0.1 (the ring's mode std): the poster gives neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mcbench.errors import McbenchError
from mcbench.methods.blocks.losses import d_loss, g_loss_nonsaturating
from mcbench.plugin.method import Method, Problem, positive


def mixture_log_likelihood(x: torch.Tensor, theta: torch.Tensor, sigma: float) -> torch.Tensor:
    """log (1/M) sum_j N(x_i; theta_j, sigma^2 I) for every sample x_i, stable via logsumexp.

    Flat samples x (..., N, D) and centres theta (..., M, D) give (..., N): leading
    dimensions (a replica's) pair batches up. Squared distances by the expansion
    |x|^2 + |t|^2 - 2 x.t, so the memory is N x M (not N x M x D) for images too.
    """
    d = x.shape[-1]
    t2 = theta.pow(2).sum(-1).unsqueeze(-2)
    sq = x.pow(2).sum(-1, keepdim=True) + t2 - 2 * x @ theta.transpose(-1, -2)
    log_p = -sq.clamp_min(0) / (2 * sigma**2) - 0.5 * d * math.log(2 * math.pi * sigma**2)
    return torch.logsumexp(log_p, dim=-1) - math.log(theta.shape[-2])


def sig_loss(x: torch.Tensor, theta: torch.Tensor, sigma: float, dim: int = 0) -> torch.Tensor:
    """H_M = -mean_i log (1/M) sum_j N(x_i; theta_j, sigma^2 I) of samples along `dim`
    (1: (R, N, ...) and (R, M, ...) give (R,), each replica's batches on their own)."""
    log_lik = mixture_log_likelihood(x.flatten(dim + 1), theta.flatten(dim + 1), sigma)
    return -(log_lik.mean() if dim == 0 else log_lik.mean(-1))


@dataclass
class GANSIConfig:
    lam: float = 1.0  # lambda, weight of the SIG loss (poster: a hyperparameter >= 0)
    sigma: float = 0.1  # bandwidth of p(x | theta) = N(theta, sigma^2 I)
    d_steps: int = 1  # discriminator updates per generator update

    def validate(self) -> None:
        if not self.lam >= 0:
            raise McbenchError(f"method 'gan-si': lam must be >= 0, got {self.lam}")
        positive("gan-si", sigma=self.sigma, d_steps=self.d_steps)


class GANSI(Method):
    name = "gan-si"
    Config = GANSIConfig
    defaults_from = (
        "poster (D and G losses, eq. 3-4); lambda, sigma and the Gaussian p(x|theta) are "
        "our choices (the poster gives none); nets and Adam from the protocol"
    )
    vectorized = True

    def __init__(self, problem: Problem, cfg: GANSIConfig) -> None:
        super().__init__(problem, cfg)
        self.G = problem.generator(problem.latent_dim)
        self.D = problem.critic()
        self.opt_g = problem.adam(self.G.parameters(), problem.lr_g)
        self.opt_d = problem.adam(self.D.parameters(), problem.lr_d)

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.num_samples(real)
        for _ in range(self.cfg.d_steps):
            theta = self.G(self.randn(n)).detach()
            loss_d = d_loss(self.D(real), self.D(theta))
            self.minimize(self.opt_d, loss_d)

        theta = self.G(self.randn(n))
        gan = g_loss_nonsaturating(self.D(theta))
        log_lik = mixture_log_likelihood(self.flatten(real), self.flatten(theta), self.cfg.sigma)
        sig = -self.mean(log_lik)  # H_M
        loss_g = gan + self.cfg.lam * sig
        self.minimize(self.opt_g, loss_g)
        losses = {"d": loss_d, "g": loss_g, "gan": gan, "sig": sig}
        return {k: v.detach() for k, v in losses.items()}
