"""Divergence watch: the first step at which a replica's losses went NaN or inf.

Reading a loss on the host after every update would stall the device each step, so the
watch keeps, on the device, the first bad step of each replica (0: none yet) and updates
it with a few tensor ops per step; the loop reads it only where it stops anyway (at
evaluation and checkpoint steps) and fails each replica at its own first bad step.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


class DivergenceWatch:
    """First non-finite step of each of `replicas` replicas, kept on `device`."""

    def __init__(self, replicas: int, device: torch.device) -> None:
        self.first = torch.zeros(replicas, dtype=torch.long, device=device)

    def observe(self, step: int, losses: Mapping[str, torch.Tensor | float]) -> None:
        """Note `step` for each replica whose losses are not all finite (and that was
        fine so far). Losses are () for one seed and (R,) for R replicas: both are viewed
        as (R,). No host sync: NaN or inf in any loss makes their sum non-finite."""
        if not losses:
            return
        total = sum(losses.values(), start=0.0)
        total = torch.as_tensor(total, device=self.first.device).reshape(self.first.shape)
        ok = torch.isfinite(total) | (self.first > 0)
        self.first = torch.where(ok, self.first, step)

    def first_bad(self) -> dict[int, int]:
        """{replica: its first bad step} for the replicas that diverged (one host sync)."""
        return {r: s for r, s in enumerate(self.first.tolist()) if s}
