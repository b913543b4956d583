"""GAN losses shared by every adversarial method, written once on logits.

Logits are (n, k) for one seed, giving a scalar loss, or (R, n, k) with replicas,
giving one loss per replica (see mcbench.plugin.replicas).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from mcbench.errors import McbenchError


def sample_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the samples: a scalar for (n, k), (R,) for (R, n, k)."""
    return x.mean() if x.dim() <= 2 else x.flatten(1).mean(1)


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator cross-entropy: real labelled 1, fake labelled 0."""
    return sample_mean(F.softplus(-real_logits)) + sample_mean(F.softplus(fake_logits))


def g_loss_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(G(z)), the generator loss of Goodfellow et al.'s practical variant."""
    return sample_mean(F.softplus(-fake_logits))


def g_loss_minimax(fake_logits: torch.Tensor) -> torch.Tensor:
    """log(1 - D(G(z))), the saturating minimax loss (kept for completeness)."""
    return -sample_mean(F.softplus(fake_logits))


def simultaneous_update(
    method: Any, real: torch.Tensor, fake: torch.Tensor, view: Callable = lambda x: x
) -> dict[str, torch.Tensor]:
    """GAN and PacGAN's `simultaneous=true` update (PacGAN's code): both gradients at the
    current weights from one draw `fake`, then both nets step. `view` is what D sees of
    a batch of generated samples (PacGAN: its packs); `real` is already in that form."""
    loss_g = g_loss_nonsaturating(method.D(view(fake)))
    grads_g = method.grad(loss_g, list(method.G.parameters()))  # before D changes
    loss_d = d_loss(method.D(real), method.D(view(fake.detach())))
    method.minimize(method.opt_d, loss_d)
    for p, g in zip(method.G.parameters(), grads_g, strict=True):
        p.grad = g
    method.opt_g.step()
    return {"d": loss_d.detach(), "g": loss_g.detach()}


def check_simultaneous(method: str, simultaneous: bool, d_steps: int) -> None:
    """A simultaneous update takes one D step per G step (PacGAN's code)."""
    if simultaneous and d_steps != 1:
        raise McbenchError(
            f"method {method!r}: simultaneous=true takes exactly one D step per update "
            f"(d_steps={d_steps})"
        )
