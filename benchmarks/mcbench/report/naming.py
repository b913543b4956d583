"""What the report's tables and figures both need to know about names: how each metric
is declared (direction, label, role, scale) and the order of methods and datasets.

Nothing here lists metrics or methods by hand: metrics come from their declarations
(mcbench.metrics.registry), methods from the registry, datasets from DATASETS.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from mcbench.datasets import DATASETS
from mcbench.errors import McbenchError
from mcbench.metrics import MetricSpec, all_metrics, metric_spec
from mcbench.plugin.method import Method
from mcbench.plugin.registry import methods

# Where each role's metrics go, in table-column order (mcbench.metrics.registry.Role).
TABLE_ROLES = ("quality", "detail")
CURVE_ROLES = ("quality",)
DIAGNOSTIC_ROLES = ("diagnostic",)


@lru_cache(maxsize=1)
def plugin_error() -> str | None:
    """Import every method plugin once, so metrics they declare are known; a broken
    plugin must not stop a report of results that are already on disk."""
    try:
        methods()
    except McbenchError as exc:
        return str(exc)
    return None


def spec_of(name: str) -> MetricSpec:
    """The declaration of `name`; an undeclared name (an old or foreign results folder)
    gets a stand-in shown in tables only, without a direction."""
    plugin_error()
    spec = metric_spec(name)
    if spec is not None:
        return spec
    return MetricSpec(name, None, name, "not declared", "unknown", role="detail")


def is_declared(name: str) -> bool:
    plugin_error()
    return metric_spec(name) is not None


def direction(name: str) -> str:
    """Which way is better: "higher", "lower", or "" for neither."""
    return spec_of(name).direction or ""


def label(name: str) -> str:
    return spec_of(name).label


def arrow(name: str) -> str:
    return {"higher": "↑", "lower": "↓"}.get(direction(name), "")


def _declared_rank(name: str) -> int:
    spec = metric_spec(name)
    order = [s.name for s in all_metrics()]
    return order.index(spec.name) if spec is not None else len(order)


def metrics_for(names: Iterable[str], roles: tuple[str, ...]) -> list[str]:
    """The names whose role is in `roles`: by role, then declaration order, then name."""
    present = {n for n in names if n and spec_of(n).role in roles}
    return sorted(present, key=lambda n: (roles.index(spec_of(n).role), _declared_rank(n), n))


def table_metrics(names: Iterable[str]) -> list[str]:
    """Columns of the final-metrics tables."""
    return metrics_for(names, TABLE_ROLES)


def curve_metrics(names: Iterable[str]) -> list[str]:
    """Panels of the curve figures (against updates and against time)."""
    return metrics_for(names, CURVE_ROLES)


def diagnostic_metrics(names: Iterable[str]) -> list[str]:
    return metrics_for(names, DIAGNOSTIC_ROLES)


def undeclared(names: Iterable[str]) -> list[str]:
    return sorted({n for n in names if n and not is_declared(n)})


# -- methods and datasets -------------------------------------------------------------


def _family(cls: type) -> type:
    """The method class a variant derives from (LBT for LBT-GAN and LBT-implicit): the
    most basic named Method subclass in its MRO."""
    named = [c for c in cls.__mro__ if issubclass(c, Method) and c is not Method and c.name]
    return named[-1] if named else cls


@lru_cache(maxsize=1)
def _method_ranks() -> dict[str, tuple[int, int]]:
    """name -> (family, position): families in registry order, each family's members
    together in registry order."""
    if plugin_error() is not None:
        return {}
    families: list[type] = []
    ranks = {}
    for i, (name, entry) in enumerate(methods().items()):
        fam = _family(entry.cls)
        if fam not in families:
            families.append(fam)
        ranks[name] = (families.index(fam), i)
    return ranks


def method_key(name: str) -> tuple[int, int, str]:
    """Sort key of a method label (selector, perhaps with parameters or a budget):
    registered methods by family, then anything else by name."""
    base = str(name).split("[")[0].split(" ")[0]
    ranks = _method_ranks()
    fam, pos = ranks.get(base, (len(ranks), 0))
    return (fam, pos, str(name))


def sort_methods(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=method_key)


def dataset_order(names: Iterable[str]) -> list[str]:
    """Registered datasets in registry order, then any other name alphabetically."""
    names = set(names)
    known = [d for d in DATASETS if d in names]
    return known + sorted(names - set(known))
