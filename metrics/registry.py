"""Metric declarations: what each recorded metric name means and how reports show it.

Every metric a dataset, method or the harness records is declared once, next to the
code that computes it, as a `MetricSpec`. Reports, figures and the depth study read the
declarations (`metric_spec`, `all_metrics`) instead of keeping their own lists, so a
metric registered by a plugin appears in reports with its direction and label.

A family of names (``loss_*``: one per loss a method returns) is declared once by a
name ending in ``*``; an exact declaration wins over a family, a longer family over a
shorter one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from mcbench.errors import McbenchError

Direction = Literal["higher", "lower"]
Scale = Literal["linear", "log"]
# Where reports show a metric:
#   quality     what methods are compared on: final tables, paper layouts, curve figures;
#   detail      final tables only (a count qualifying another metric, a cost, a
#               published protocol's variant of a quality metric);
#   diagnostic  a method's training diagnostics: curves per method, never in tables;
#   training    recorded for the run's own record (losses, failure step): not shown.
Role = Literal["quality", "detail", "diagnostic", "training"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric name (or ``prefix*`` family): its sense and how to show it.

    `direction` is which way is better (None: neither, e.g. a loss); `scale` is the axis
    of its curves; `unit` labels that axis, and diagnostics sharing a unit share a panel.
    `samples` is the number of samples the definition itself fixes (None: every sample
    evaluated), so reports put a published number beside ours only at the same N.
    `lower` and `upper` bound the values (a count is never below 0): curve bands are
    clipped to them.
    `flagged_by` names a metric counting how many of this one's items sit near its
    threshold (modes_covered: modes_near_threshold); where that count is above 0 for a
    method, reports flag the cell as read near the threshold.
    """

    name: str
    direction: Direction | None
    label: str
    definition: str
    source: str
    scale: Scale = "linear"
    role: Role = "quality"
    unit: str = ""
    samples: int | None = None
    lower: float | None = None
    upper: float | None = None
    flagged_by: str | None = None

    def __post_init__(self) -> None:
        if not self.name or "*" in self.name[:-1]:
            raise McbenchError(f"metric name {self.name!r}: give a name or one 'prefix*'")
        checks = (
            ("direction", self.direction, (*get_args(Direction), None)),
            ("scale", self.scale, get_args(Scale)),
            ("role", self.role, get_args(Role)),
        )
        for what, value, allowed in checks:
            if value not in allowed:
                raise McbenchError(
                    f"metric {self.name!r}: {what} {value!r} is not one of {allowed}"
                )
        if not self.label or not self.definition:
            raise McbenchError(f"metric {self.name!r} needs a label and a definition")
        if self.samples is not None and self.samples < 1:
            raise McbenchError(f"metric {self.name!r}: samples must be >= 1 or None")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise McbenchError(f"metric {self.name!r}: lower bound above upper bound")

    @property
    def is_family(self) -> bool:
        return self.name.endswith("*")

    def covers(self, name: str) -> bool:
        """Whether `name` is this metric, or a member of this family."""
        return name.startswith(self.name[:-1]) if self.is_family else name == self.name


_REGISTRY: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec, *, replace: bool = False) -> MetricSpec:
    """Declare `spec`. Declaring the same spec again is a no-op (a module imported
    twice); a different spec under a taken name is an error unless `replace`."""
    old = _REGISTRY.get(spec.name)
    if old is not None and old != spec and not replace:
        raise McbenchError(
            f"metric {spec.name!r} is already declared differently ({old.definition!r}); "
            "pass replace=True to redefine it"
        )
    _REGISTRY[spec.name] = spec
    return spec


def unregister_metric(name: str) -> None:
    """Remove a declaration (tests, plugins that unload); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def metric_spec(name: str) -> MetricSpec | None:
    """The declaration covering `name`: exact, else the longest family; None if none."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    families = [s for s in _REGISTRY.values() if s.is_family and s.covers(name)]
    return max(families, key=lambda s: len(s.name), default=None)


def all_metrics() -> tuple[MetricSpec, ...]:
    """Every declaration, in the order declared (reports order columns by it)."""
    return tuple(_REGISTRY.values())
