"""Metrics: pure functions of (samples, dataset description) returning declared keys.

The runner adds step, time and prefixes; nothing here samples or trains. Every metric
name is declared (`MetricSpec`, mcbench.metrics.registry); importing this package
declares the built-in ones.
"""

from mcbench.metrics.mixtures import MIXTURE_METRICS, MIXTURE_SPECS, gaussian_kl, mixture_metrics
from mcbench.metrics.recorded import RECORDED_SPECS
from mcbench.metrics.registry import (
    MetricSpec,
    all_metrics,
    metric_spec,
    register_metric,
    unregister_metric,
)
from mcbench.metrics.stacked import MODE_METRICS, MODE_SPECS, mode_metrics, stack_labels

# isort: split
# After the metrics above: reports order columns by declaration.
from mcbench.metrics import features, inception, prdc  # noqa: F401 (declares their metrics)

__all__ = [
    "MIXTURE_METRICS",
    "MIXTURE_SPECS",
    "MODE_METRICS",
    "MODE_SPECS",
    "RECORDED_SPECS",
    "MetricSpec",
    "all_metrics",
    "gaussian_kl",
    "metric_spec",
    "mixture_metrics",
    "mode_metrics",
    "register_metric",
    "stack_labels",
    "unregister_metric",
]
