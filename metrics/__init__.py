"""Metrics: pure functions of (samples, dataset description) returning declared keys.

The runner adds step, time and prefixes; nothing here samples or trains.
"""

from mcbench.metrics.mixtures import MIXTURE_METRICS, gaussian_kl, mixture_metrics
from mcbench.metrics.stacked import MODE_METRICS, mode_metrics, stack_labels

__all__ = [
    "MIXTURE_METRICS",
    "MODE_METRICS",
    "gaussian_kl",
    "mixture_metrics",
    "mode_metrics",
    "stack_labels",
]
