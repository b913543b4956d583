"""EBGAN (Zhao, Mathieu and LeCun, ICLR 2017): the discriminator is an autoencoder whose
reconstruction error is an energy, low on data and pushed up to a margin on samples.

Nets: generator G; discriminator D = (Enc, Dec), an autoencoder with energy
    D(x) = mean_k (Dec(Enc(x)) - x)_k^2        (per sample, over data coordinates)
and Enc(x) = S, the code the pulling-away term reads. Per generator update:
  1. for d_steps: update D on a real batch x and fresh z, with the margin loss
        L_D = mean D(x) + mean max(0, m - D(G(z)))            (paper eq. 1)
     (a generated sample whose energy already exceeds m adds no gradient);
  2. update G on fresh z:
        L_G = mean D(G(z)) + lambda_PT * f_PT(S),  S = Enc(G(z))  (eq. 2 and 14),
        f_PT(S) = 1/(N(N-1)) sum_{i != j} (S_i . S_j / (|S_i| |S_j|))^2,
     the pulling-away term: mean squared cosine similarity between the codes of
     distinct generated samples, 0 when they are mutually orthogonal, 1 when parallel.
With lambda_PT = 0 this is plain EBGAN; the default (0.1) is EBGAN-PT, the paper's
model for every image experiment after MNIST (section 2.4: "a weight of 0.1").

Choices the paper leaves open, made here:
  - the energy: equation 13 writes the norm ||Dec(Enc(x)) - x||, section 2.3.1 the
    element-wise l2 loss, neither how it is normalised; we take the mean squared error
    per sample over its coordinates, so one margin means the same per coordinate on
    2-D points and 3x28x28 images;
  - the margin m: the paper's margins (10 on MNIST, section 4.1; its appendix sets
    others for LSUN, CelebA and ImageNet) are for images, on its own energy scale. On
    ours we took m = 0.3 from a short sweep on `ring` (m = 0.03, 0.1, 0.3, 1; 2 seeds,
    1,000 updates): every m covered 8 of 8 modes and D's loss settled at m, the
    equilibrium value of Theorem 1; the high-quality share was 67-71% at 0.03, 75-77%
    at 0.1 and 78-83% at 0.3 and 1 (within seed noise of each other). An MSE of 0.3 is
    a reconstruction about 0.77 away, one mode spacing of the ring;
  - the autoencoder from the protocol's nets: Enc = `problem.critic(out_dim=code_dim)`,
    the protocol's discriminator with a `code_dim` output (2 x 128 tanh on 2-D, the
    conv trunk and dense layer on images, scaled by the protocol's D width ratio, and
    given whatever the harness does to every critic, such as instance noise); Dec =
    `problem.mlp(code_dim, data size)`, the protocol's MLP with a linear output; both
    trained together at the protocol's discriminator lr;
  - the code size: 128, the width of the 2-D protocol's hidden layers (the paper's
    MNIST grid sizes D's layers 128-1024 and keeps Dec a single layer).
The hinge is per sample, as eq. 1 is written (some public ports apply it to the batch
mean energy instead).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from mcbench.errors import McbenchError
from mcbench.plugin.method import Method, Problem, positive

if TYPE_CHECKING:
    from mcbench.plugin.protocol import Protocol


def pulling_away(s: torch.Tensor) -> torch.Tensor:
    """f_PT of codes s (..., N, k): the mean over ordered pairs i != j of the squared
    cosine similarity of s_i and s_j; leading dimensions (a replica's) are kept, so
    (N, k) gives a scalar and (R, N, k) gives (R,). N must be at least 2."""
    n = s.shape[-2]
    if n < 2:
        raise ValueError(f"the pulling-away term needs at least 2 samples, got {n}")
    u = F.normalize(s, dim=-1)
    cos2 = (u @ u.transpose(-1, -2)) ** 2
    off_diagonal = cos2.sum((-2, -1)) - cos2.diagonal(dim1=-2, dim2=-1).sum(-1)
    return off_diagonal / (n * (n - 1))


def margin_loss(
    real_energy: torch.Tensor,
    fake_energy: torch.Tensor,
    m: float,
    mean: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """L_D = mean D(x) + mean max(0, m - D(G(z))) per seed (`mean`: Method.mean). A
    generated sample whose energy is above m sits on the hinge's flat side: no gradient."""
    return mean(real_energy) + mean(F.relu(m - fake_energy))


@dataclass
class EBGANConfig:
    # margin m of eq. 1, on the per-coordinate MSE energy. Left open by the paper for
    # 2-D (its margins are for images, on its own scale): 0.3 from a short ring sweep.
    margin: float = 0.3
    pt_weight: float = 0.1  # lambda_PT, weight of the pulling-away term (section 2.4)
    code_dim: int = 128  # size of Enc's output S (our choice: the protocol's 2-D width)
    d_steps: int = 1  # discriminator updates per generator update

    def validate(self) -> None:
        positive("ebgan", margin=self.margin, code_dim=self.code_dim, d_steps=self.d_steps)
        if not self.pt_weight >= 0:
            raise McbenchError(f"method 'ebgan': pt_weight must be >= 0, got {self.pt_weight}")


class EBGAN(Method):
    name = "ebgan"
    Config = EBGANConfig
    defaults_from = (
        "paper (margin loss eq. 1-2, pulling-away term with weight 0.1, section 2.4); "
        "MSE energy, margin 0.3 and code size 128 our choices for 2-D; nets and Adam "
        "from the protocol"
    )
    vectorized = True

    @classmethod
    def check_protocol(cls, config: EBGANConfig, protocol: Protocol) -> None:
        """The pulling-away term compares distinct samples of one batch: it needs two."""
        if config.pt_weight > 0 and protocol.batch_size < 2:
            raise McbenchError(
                f"method 'ebgan': the pulling-away term needs a batch of at least 2, "
                f"protocol {protocol.name!r} has {protocol.batch_size} (set pt_weight=0)"
            )

    def __init__(self, problem: Problem, cfg: EBGANConfig) -> None:
        super().__init__(problem, cfg)
        self.G = problem.generator(problem.latent_dim)
        self.enc = problem.critic(out_dim=cfg.code_dim)  # D's encoder half
        self.dec = problem.mlp(cfg.code_dim, problem.data_dim)
        self.opt_g = problem.adam(self.G.parameters(), problem.lr_g)
        self.opt_d = problem.adam([*self.enc.parameters(), *self.dec.parameters()], problem.lr_d)

    def energy(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(D(x), S): each sample's mean squared reconstruction error, (n,) or (R, n),
        and its code Enc(x)."""
        s = self.enc(x)
        return (self.dec(s) - self.flatten(x)).pow(2).mean(-1), s

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.num_samples(real)
        for _ in range(self.cfg.d_steps):  # 1. D: energy down on data, up to m on samples
            fake = self.G(self.randn(n)).detach()
            real_energy, _ = self.energy(real)
            fake_energy, _ = self.energy(fake)
            loss_d = margin_loss(real_energy, fake_energy, self.cfg.margin, self.mean)
            self.minimize(self.opt_d, loss_d)

        energy, s = self.energy(self.G(self.randn(n)))  # 2. G: low energy, codes apart
        losses = {"d": loss_d, "real_energy": self.mean(real_energy)}
        loss_g = self.mean(energy)
        if self.cfg.pt_weight > 0:  # EBGAN-PT; plain EBGAN skips the N x N similarities
            losses["pt"] = pulling_away(s)
            loss_g = loss_g + self.cfg.pt_weight * losses["pt"]
        self.minimize(self.opt_g, loss_g, inputs=list(self.G.parameters()))
        losses["g"] = loss_g
        return {k: v.detach() for k, v in losses.items()}
