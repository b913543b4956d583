"""Evaluation at a step: losses, timing, sample metrics and diagnostics per replica.

It runs outside the timed update and draws samples from an evaluation stream of its own
(one per replica and step), so evaluating never changes the training numbers. A replica
whose samples are NaN or inf fails there; the others are evaluated as usual.
"""

from __future__ import annotations

from typing import Any

import torch

from mcbench.run.ledger import Ledger
from mcbench.run.seeds import derive_seed, generator

EVAL_CHUNK = 65_536


@torch.no_grad()
def generate(method: Any, n: int, rng: torch.Generator | list[torch.Generator]) -> torch.Tensor:
    """n samples in chunks, moved to the CPU, drawn with the evaluation stream `rng`
    (with replicas: one stream per replica, samples (R, n, ...), smaller chunks)."""
    grouped = isinstance(rng, list)
    chunk = max(1024, EVAL_CHUNK // len(rng)) if grouped else EVAL_CHUNK
    out = [method.sample(min(chunk, n - s), rng).float().cpu() for s in range(0, n, chunk)]
    return torch.cat(out, dim=1 if grouped else 0)


def per_replica(value: torch.Tensor | float, replicas: int) -> list[float]:
    """A loss or diagnostic as one float per replica: () for one seed and (R,) for R
    replicas both read as (R,), in one host transfer. Through float64, so each value
    equals `float()` of its element exactly."""
    return torch.as_tensor(value, dtype=torch.float64).reshape(replicas).tolist()


class Evaluator:
    """Evaluates a method (plain, or R replicas: `method.problem.replicas`) on
    `eval_samples` samples per replica and records the results in a Ledger."""

    def __init__(self, method: Any, dataset: Any, eval_samples: int, device: torch.device) -> None:
        self.method, self.dataset = method, dataset
        self.eval_samples, self.device = eval_samples, device
        self.plain = method.problem.replicas is None

    def samples(self, step: int, seeds: list[int]) -> torch.Tensor:
        """(R, n, ...) samples on the CPU, replica r drawn from seed r's stream for `step`;
        a plain method's (n, ...) samples are viewed as R = 1."""
        rngs = [generator(self.device, derive_seed(sd, f"eval{step}")) for sd in seeds]
        if self.plain:
            return generate(self.method, self.eval_samples, rngs[0]).unsqueeze(0)
        return generate(self.method, self.eval_samples, rngs)

    def __call__(self, step: int, losses: dict[str, Any], ledger: Ledger) -> None:
        """Record the step's losses, the time per update since the last evaluation, the
        dataset's metrics of fresh samples and the method's diagnostics, per live replica."""
        n = ledger.replicas
        loss_values = {k: per_replica(v, n) for k, v in losses.items()}
        ms = ledger.progress.take_step_time_ms(n)
        for r in ledger.alive:
            ledger.latest[r] = {}  # filled by `record` with this evaluation's values
            for k, v in loss_values.items():
                ledger.record(r, step, f"loss_{k}", v[r])
            ledger.record(r, step, "step_time_ms", ms)
        x = self.samples(step, ledger.seeds)
        diagnostics = {k: per_replica(v, n) for k, v in self.method.diagnostics().items()}
        for r in list(ledger.alive):
            if not torch.isfinite(x[r]).all():
                ledger.fail(r, step, f"generated samples contain NaN or inf at step {step}")
                continue
            for k, v in self.dataset.evaluate(x[r]).items():
                ledger.record(r, step, k, v)
            for k, v in diagnostics.items():
                ledger.record(r, step, k, v[r])
            ledger.final_samples[r] = x[r]
