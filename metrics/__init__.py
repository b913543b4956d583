"""Metrics: pure functions of (samples, dataset description) returning declared keys.

The runner adds step, time and prefixes; nothing here samples or trains.
"""

from mcbench.metrics.mixtures import MIXTURE_METRICS, gaussian_kl, mixture_metrics

__all__ = ["MIXTURE_METRICS", "gaussian_kl", "mixture_metrics"]
