"""MMD GAN (Li, Chang, Cheng, Yang and Poczos, NIPS 2017): MMD under a learned kernel.

Nets: generator G (z -> x); critic phi = (f_enc, f_dec): an encoder to features f(x)
and a decoder back to data. The kernel is a sum of Gaussian kernels on the features,
k(x, y) = sum_q exp(-||f(x) - f(y)||^2 / (2 sigma_q^2)), sigma_q in {1, 2, 4, 8, 16}, and
the discrepancy both players use is (the authors' code)
  L(x, G(z)) = sqrt(MMD^2_k(f(x), f(G(z)))) - lambda_rg * h,
  h = mean_j relu(mean_i f(G(z_i))_j - mean_i f(x_i)_j),
h being the code's one-sided penalty: the critic is charged where a feature's mean on
generated data exceeds its mean on real data (the paper's feasible-set reduction).
Per generator update (Algorithm 1), on a real batch x:
  1. for n_critic: update phi (fresh z each time) to maximise
        L(x, y) - lambda_ae * (mean (x - f_dec(f(x)))^2 + mean (y - f_dec(f(y)))^2),
     y = G(z) held fixed: the autoencoder term keeps f injective (paper section 3);
     then clip the encoder's weights to [-clip, clip] (the decoder is not clipped, as
     in the code);
  2. update G to minimise L(x, G(z)) on fresh z.

Choices, each a Config field:
  - MMD^2 by the biased estimator (the V-statistic), as the code computes it;
    `estimator="unbiased"` takes the U-statistic;
  - the objective is the code's, sqrt(MMD^2) with the one-sided penalty, because its
    weights lambda_rg = 16 and lambda_ae = 8 were set for it: under a clipped critic the
    2-D protocol's features are small (about 1e-3), MMD^2 is about their square (1e-7)
    and the penalty, linear in them, would swamp MMD^2. Preset `algorithm-1` takes
    Algorithm 1's objective as printed: MMD^2, no one-sided penalty. The code's
    sqrt(relu(MMD^2)) becomes sqrt(max(MMD^2, 1e-12)) here, finite in its gradient;
  - the critic's features have the latent's size (the code: k = nz);
  - the autoencoder error is the mean over samples and coordinates (the code's L2
    `match`), which lambda_ae = 8 was set for;
  - every critic step reuses the update's real batch (the protocol hands one batch per
    update, as the GAN's d_steps do); the code draws a fresh one per critic step.
Not taken: the code's 100 critic steps for the first 25 generator updates and every
500th (from the WGAN code): a step-dependent loop, which a captured CUDA graph of the
update could not replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mcbench.errors import McbenchError
from mcbench.methods.blocks.kernels import ESTIMATORS, mmd2
from mcbench.plugin.method import Method, Problem, positive

OPTIMIZERS = ("adam", "rmsprop")


@dataclass
class MMDGANConfig:
    n_critic: int = 5  # critic updates per generator update (Algorithm 1 and the code)
    clip: float = 0.01  # encoder weights clipped to [-clip, clip] (Algorithm 1); 0: off
    lambda_ae: float = 8.0  # autoencoder weight (code: lambda_AE_X = lambda_AE_Y = 8)
    lambda_rg: float = 16.0  # one-sided penalty weight (code: lambda_rg = 16; not in Alg. 1)
    sigma_min: float = 1.0  # bandwidths sigma_q = sigma_min * 2^q, q < n_kernels:
    n_kernels: int = 5  # {1, 2, 4, 8, 16} (paper section 5 and the code)
    features: int = 0  # critic feature size; 0: the latent size (the code's k = nz)
    estimator: str = "biased"  # MMD^2 estimator (the code's: biased)
    sqrt_mmd: bool = True  # sqrt(MMD^2), the code's; False: Algorithm 1's MMD^2
    # Optimiser of G and the critic: the protocol's Adam at its lr_g / lr_d by default
    # (every method shares it); preset paper: RMSProp at 5e-5 (Algorithm 1, the code).
    optimizer: str = "adam"
    lr: float = 0.0  # one learning rate for G and the critic; 0: the protocol's two

    def validate(self) -> None:
        positive(
            "mmdgan", n_critic=self.n_critic, sigma_min=self.sigma_min, n_kernels=self.n_kernels
        )
        for key in ("clip", "lambda_ae", "lambda_rg", "features", "lr"):
            if not getattr(self, key) >= 0:
                raise McbenchError(f"method 'mmdgan': {key} must be >= 0, got {getattr(self, key)}")
        if self.estimator not in ESTIMATORS:
            raise McbenchError(
                f"method 'mmdgan': estimator must be one of {', '.join(ESTIMATORS)}, "
                f"got {self.estimator!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise McbenchError(
                f"method 'mmdgan': optimizer must be one of {', '.join(OPTIMIZERS)}, "
                f"got {self.optimizer!r}"
            )

    @property
    def sigmas(self) -> tuple[float, ...]:
        return tuple(self.sigma_min * 2.0**q for q in range(self.n_kernels))


class MMDGAN(Method):
    name = "mmdgan"
    Config = MMDGANConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # the paper's optimiser: RMSProp (Algorithm 1) at the code's lr 5e-5 for G and phi
        "paper": {"optimizer": "rmsprop", "lr": 5e-5},
        # Algorithm 1's objective as printed: MMD^2, no one-sided penalty
        "algorithm-1": {"sqrt_mmd": False, "lambda_rg": 0.0},
    }
    defaults_from = (
        "authors' code (sqrt(MMD^2), one-sided penalty 16, autoencoder 8, biased MMD^2, "
        "sigmas 1-16) and Algorithm 1 (n_critic 5, clip 0.01); nets and Adam from the "
        "protocol; preset paper: RMSProp 5e-5; preset algorithm-1: MMD^2, no penalty"
    )
    vectorized = True

    def __init__(self, problem: Problem, cfg: MMDGANConfig) -> None:
        super().__init__(problem, cfg)
        k = cfg.features or problem.latent_dim
        self.G = problem.generator(problem.latent_dim)
        self.f_enc = problem.encoder(out_dim=k)
        self.f_dec = problem.generator(k)  # features back to data: G's architecture (code)
        critic = [*self.f_enc.parameters(), *self.f_dec.parameters()]
        self.opt_g = self._optimizer(self.G.parameters(), problem.lr_g)
        self.opt_c = self._optimizer(critic, problem.lr_d)

    def _optimizer(self, params, protocol_lr: float) -> torch.optim.Optimizer:
        lr = self.cfg.lr or protocol_lr
        if self.cfg.optimizer == "adam":
            return self.problem.adam(params, lr)
        return torch.optim.RMSprop(params, lr=lr, capturable=self.problem.capturable)

    def discrepancy(self, fx: torch.Tensor, fy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, MMD^2) of features fx (real) and fy (generated): L = sqrt(MMD^2) (MMD^2
        with sqrt_mmd off) - lambda_rg * h. Per seed: a scalar, or (R,) with replicas."""
        m2 = mmd2(fx, fy, self.cfg.sigmas, self.cfg.estimator)
        dist = m2.clamp_min(1e-12).sqrt() if self.cfg.sqrt_mmd else m2
        h = F.relu(fy.mean(-2) - fx.mean(-2)).mean(-1)
        return dist - self.cfg.lambda_rg * h, m2

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """f(x): one flat feature vector per sample."""
        return self.flatten(self.f_enc(x))

    def autoencoder_error(self, x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        """mean (x - f_dec(f(x)))^2 over samples and coordinates, per seed."""
        return self.mean((self.flatten(x) - self.flatten(self.f_dec(fx))).pow(2))

    def critic_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """What step 1 minimises: -(L - lambda_ae * autoencoder error)."""
        fx, fy = self.features(real), self.features(fake)
        objective, _ = self.discrepancy(fx, fy)
        ae = self.autoencoder_error(real, fx) + self.autoencoder_error(fake, fy)
        return -(objective - self.cfg.lambda_ae * ae)

    @torch.no_grad()
    def clip_encoder(self) -> None:
        if self.cfg.clip > 0:
            for p in self.f_enc.parameters():
                p.clamp_(-self.cfg.clip, self.cfg.clip)

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.num_samples(real)
        # 1. critic: maximise the discrepancy, keep the autoencoder, clip the encoder
        for _ in range(self.cfg.n_critic):
            fake = self.G(self.randn(n)).detach()
            loss_c = self.critic_loss(real, fake)
            self.minimize(self.opt_c, loss_c)
            self.clip_encoder()

        # 2. generator: minimise the discrepancy under the current kernel
        with torch.no_grad():
            fx = self.features(real)
        loss_g, m2 = self.discrepancy(fx, self.features(self.G(self.randn(n))))
        self.minimize(self.opt_g, loss_g, inputs=list(self.G.parameters()))
        return {"d": loss_c.detach(), "g": loss_g.detach(), "mmd2": m2.detach()}
