"""GAN losses shared by every adversarial method, written once on logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator cross-entropy: real labelled 1, fake labelled 0."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(G(z)), the generator loss of Goodfellow et al.'s practical variant."""
    return F.softplus(-fake_logits).mean()


def g_loss_minimax(fake_logits: torch.Tensor) -> torch.Tensor:
    """log(1 - D(G(z))), the saturating minimax loss (kept for completeness)."""
    return -F.softplus(fake_logits).mean()
