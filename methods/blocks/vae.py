"""The VAE density estimator shared by the LBT methods.

LBT needs an explicit model whose log-likelihood bound can be maximised on generated
samples and differentiated through its own optimiser steps. The forward pass is a pure
function of (x, eps): the reparameterisation noise comes from the caller (the method's
seeded stream), so an unrolled ELBO is a deterministic function of the generator's
samples, which is what the finite-difference tests check.

ELBO per sample, data flattened to D values, latent size L:
    log N(x; mu_dec(z), diag(var_dec)) - KL(N(mu_enc, diag(var_enc)) || N(0, I)),
    z = mu_enc + sqrt(var_enc) * eps,  eps ~ N(0, I_L).
The decoder variance is fixed (the LBT authors' code: 0.001, which keeps the estimator
sharp enough to separate modes) or learned per dimension (an option).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mcbench.errors import McbenchError
from mcbench.plugin.method import Problem, Rng

LOG_2PI = math.log(2 * math.pi)


class VAE(nn.Module):
    """Gaussian VAE on flattened data; `forward(x, eps)` is the per-sample ELBO (nats).

    Encoder and decoder are the protocol's MLPs of `problem.estimator_hidden` widths
    (decoder widths reversed, e.g. 1000-400 encoder and 400-1000 decoder on images).
    On a replica problem the nets are replica nets and every tensor has a leading
    replica dimension, so only feature dimensions are named (from the end).
    """

    def __init__(
        self,
        problem: Problem,
        latent_dim: int = 32,
        decoder_var: float = 1e-3,
        learn_var: bool = False,
    ) -> None:
        super().__init__()
        if latent_dim < 1:
            raise McbenchError(f"VAE latent size must be >= 1, got {latent_dim}")
        if not decoder_var > 0:
            raise McbenchError(f"VAE decoder variance must be > 0, got {decoder_var}")
        hidden = tuple(problem.estimator_hidden)
        d = problem.data_dim
        self.latent_dim = latent_dim
        self.batch_dim = problem.batch_dim
        self.learn_var = learn_var
        self.encoder = problem.mlp(d, 2 * latent_dim, hidden)
        self.decoder = problem.mlp(latent_dim, 2 * d if learn_var else d, hidden[::-1])
        # Fixed log-variance; with learn_var it is the value the learned one starts near.
        self.log_var = math.log(decoder_var)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Per-sample ELBO of `x` (shape (n, *data_shape)) with noise `eps` (n, L): (n,);
        with replicas (R, n, *data_shape) and (R, n, L) give (R, n)."""
        x = x.flatten(self.batch_dim + 1)
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        z = mu + (0.5 * logvar).exp() * eps
        out = self.decoder(z)
        if self.learn_var:
            mean, dec_logvar = out.chunk(2, dim=-1)
            dec_logvar = dec_logvar + self.log_var
            log_px = -0.5 * (LOG_2PI + dec_logvar + (x - mean).square() * (-dec_logvar).exp())
        else:
            log_px = -0.5 * (LOG_2PI + self.log_var) - 0.5 * (x - out).square() / math.exp(
                self.log_var
            )
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)
        return log_px.sum(-1) - kl.sum(-1)

    def noise(self, problem: Problem, n: int, rng: Rng | None = None) -> torch.Tensor:
        """Reparameterisation noise for n samples from the method's stream (or `rng`):
        (n, L), or (R, n, L) with replicas."""
        return problem.noise(n, dim=self.latent_dim, rng=rng)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder means of latent codes (the estimator's samples, for plots)."""
        out = self.decoder(z)
        return out.chunk(2, dim=-1)[0] if self.learn_var else out
