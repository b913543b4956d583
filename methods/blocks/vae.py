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

With `likelihood="bernoulli"` the decoder outputs logits and log p(x|z) is
sum_d [x_d log sigmoid(l_d) + (1 - x_d) log(1 - sigmoid(l_d))] = -BCE-with-logits, the LBT
authors' Stacked MNIST estimator (LBT-GAN_smnist.py, `compute_est_ll`: sigmoid cross-entropy
of [0, 1] pixels). It keeps the ELBO on the scale of the GAN term (lambda_G = 1): the
Gaussian with variance 1e-3 makes it about ten times larger.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mcbench.errors import McbenchError
from mcbench.plugin.method import Problem

LOG_2PI = math.log(2 * math.pi)
LIKELIHOODS = ("gaussian", "bernoulli")


class VAE(nn.Module):
    """VAE on flattened data (Gaussian or Bernoulli decoder); `forward(x, eps)` is the
    per-sample ELBO (nats).

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
        likelihood: str = "gaussian",
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise McbenchError(
                f"VAE likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}"
            )
        if likelihood == "bernoulli" and learn_var:
            raise McbenchError("VAE: learn_var needs the gaussian likelihood (bernoulli has none)")
        if latent_dim < 1:
            raise McbenchError(f"VAE latent size must be >= 1, got {latent_dim}")
        if not decoder_var > 0:
            raise McbenchError(f"VAE decoder variance must be > 0, got {decoder_var}")
        hidden = tuple(problem.estimator_hidden)
        d = problem.data_dim
        self.latent_dim = latent_dim
        self.data_ndim = len(problem.data_shape)  # per-sample dims, counted from the end
        self.learn_var = learn_var
        self.likelihood = likelihood
        self.encoder = problem.mlp(d, 2 * latent_dim, hidden)
        self.decoder = problem.mlp(latent_dim, 2 * d if learn_var else d, hidden[::-1])
        # Fixed log-variance; with learn_var it is the value the learned one starts near.
        self.log_var = math.log(decoder_var)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Per-sample ELBO of `x` (shape (n, *data_shape)) with noise `eps` (n, L): (n,);
        with replicas (R, n, *data_shape) and (R, n, L) give (R, n)."""
        x = x.flatten(-self.data_ndim)
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        z = mu + (0.5 * logvar).exp() * eps
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            log_px = -F.binary_cross_entropy_with_logits(out, x, reduction="none")
        elif self.learn_var:
            mean, dec_logvar = out.chunk(2, dim=-1)
            dec_logvar = dec_logvar + self.log_var
            log_px = -0.5 * (LOG_2PI + dec_logvar + (x - mean).square() * (-dec_logvar).exp())
        else:
            log_px = -0.5 * (LOG_2PI + self.log_var) - 0.5 * (x - out).square() / math.exp(
                self.log_var
            )
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)
        return log_px.sum(-1) - kl.sum(-1)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder means of latent codes (the estimator's samples, for plots)."""
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            return out.sigmoid()
        return out.chunk(2, dim=-1)[0] if self.learn_var else out
