"""Declarations of the metrics the runner and the methods record besides a dataset's
evaluation: cost per update, losses, the LBT estimator's ELBO, the failure step.

They are declared here rather than beside the code that records them because that code
(mcbench.run.runner, methods/lbt*.py) imports nothing from `metrics`, and a report must
know them without building a method.
"""

from __future__ import annotations

from mcbench.metrics.registry import MetricSpec, register_metric

HARNESS = "mcbench runner"
LBT_FIG4 = "LBT (workshop version), Figure 4"
ELBO = "ELBO (nats)"

RECORDED_SPECS: tuple[MetricSpec, ...] = tuple(
    register_metric(s)
    for s in (
        MetricSpec(
            "step_time_ms",
            "lower",
            "ms / update",
            "Training time per generator update since the previous evaluation (one seed's "
            "share when seeds train together as replicas).",
            HARNESS,
            role="detail",
            unit="ms",
        ),
        MetricSpec(
            "loss_*",
            None,
            "loss",
            "A loss the method's update returned (loss_<name>), at the evaluation step.",
            HARNESS,
            role="training",
        ),
        MetricSpec(
            "failed_at_step",
            None,
            "failed at step",
            "The update at which a failed run stopped (a loss or sample was NaN or inf).",
            HARNESS,
            role="training",
        ),
        MetricSpec(
            "elbo_real",
            None,
            "ELBO, real data",
            "The LBT estimator's ELBO on a real batch fixed when the run starts.",
            LBT_FIG4,
            role="diagnostic",
            unit=ELBO,
        ),
        MetricSpec(
            "elbo_generated",
            None,
            "ELBO, generated",
            "The LBT estimator's ELBO on a fresh generated batch (its own noise stream).",
            LBT_FIG4,
            role="diagnostic",
            unit=ELBO,
        ),
        MetricSpec(
            "elbo_fake",
            None,
            "ELBO, estimator fit",
            "The estimator's ELBO on generated samples after its last fitting step of an "
            "update (recorded as the loss loss_elbo_fake).",
            "LBT (ICLR 2019 submission), Algorithm 1",
            role="diagnostic",
            unit=ELBO,
        ),
        MetricSpec(
            "elbo_real_unrolled",
            None,
            "ELBO, real after K steps",
            "The estimator's real-data ELBO after K unrolled steps: what the generator "
            "maximises (recorded as the loss loss_elbo_real_unrolled).",
            "LBT (ICLR 2019 submission), Algorithm 1",
            role="diagnostic",
            unit=ELBO,
        ),
    )
)
