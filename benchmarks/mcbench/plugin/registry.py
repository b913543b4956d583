"""Method registry: files in `methods/` plus installed plugins (entry points).

A method is found by its class attribute `name` (and its `aliases`); a selector such as
``pacgan[m=3]`` or ``lbt[preset=authors-code,K=3]`` picks hyperparameters, the same
spelling in suites and on the command line.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from mcbench.errors import McbenchError, did_you_mean
from mcbench.plugin.method import Method

ENTRY_POINT_GROUP = "mcbench.methods"


@dataclass(frozen=True)
class MethodEntry:
    name: str
    cls: type[Method]
    overrides: dict[str, Any] = field(default_factory=dict)
    origin: str = ""


def _classes_in(module) -> list[type[Method]]:
    return [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, Method)
        and obj is not Method
        and obj.__module__ == module.__name__
        and obj.name
    ]


def _add(reg: dict[str, MethodEntry], cls: type[Method], origin: str) -> None:
    names = {cls.name: {}} | {alias: dict(o) for alias, o in cls.aliases.items()}
    for name, overrides in names.items():
        if name in reg and reg[name].cls is not cls:
            raise McbenchError(
                f"method name {name!r} is defined twice: {reg[name].origin} and {origin}"
            )
        reg[name] = MethodEntry(name, cls, overrides, origin)


@lru_cache(maxsize=1)
def methods() -> dict[str, MethodEntry]:
    """Every available method by name (file plugins first, then entry points)."""
    import mcbench.methods as pkg

    reg: dict[str, MethodEntry] = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        modname = f"{pkg.__name__}.{info.name}"
        try:
            module = importlib.import_module(modname)
        except Exception as exc:  # a broken plugin file must name itself
            raise McbenchError(
                f"method file methods/{info.name}.py failed to import: {type(exc).__name__}: {exc}"
            ) from None
        for cls in _classes_in(module):
            _add(reg, cls, f"methods/{info.name}.py")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:
            raise McbenchError(
                f"method plugin {ep.name!r} ({ep.value}) failed to load: {exc}"
            ) from None
        classes = _classes_in(obj) if inspect.ismodule(obj) else [obj]
        for cls in classes:
            if not (inspect.isclass(cls) and issubclass(cls, Method) and cls.name):
                raise McbenchError(
                    f"method plugin {ep.name!r} ({ep.value}) is not a named Method subclass"
                )
            _add(reg, cls, f"entry point {ep.value}")
    return reg


def distinct_methods() -> list[str]:
    """The names that "all" means: one per distinct (class, configuration).

    A name and an alias that resolve to the same configuration (``pacgan`` with its
    default m=2 and ``pacgan2``) are one method; the alias, the more explicit name, is
    kept so that no suite trains the same thing twice.
    """
    keep: dict[tuple, str] = {}
    for name, entry in methods().items():
        cfg = entry.cls.make_config(entry.overrides)
        ident = (entry.cls, repr(cfg))
        keep[ident] = name  # aliases are registered after their class name
    chosen = set(keep.values())
    return [n for n in methods() if n in chosen]


_SELECTOR = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[(.*)\])?\s*$")


def parse_selector(selector: str) -> tuple[str, dict[str, str]]:
    """``name[k=v,k2=v2]`` -> (name, {k: v, k2: v2}); values stay strings here."""
    m = _SELECTOR.match(selector)
    if not m:
        raise McbenchError(f"malformed method selector {selector!r}; expected name[k=v,...]")
    name, inner = m.group(1), m.group(2)
    params: dict[str, str] = {}
    if inner:
        for part in inner.split(","):
            if "=" not in part:
                raise McbenchError(
                    f"malformed parameter {part.strip()!r} in {selector!r}; expected k=v"
                )
            k, v = part.split("=", 1)
            params[k.strip()] = v.strip()
    return name, params


def get_method(name: str) -> MethodEntry:
    reg = methods()
    if name not in reg:
        raise McbenchError(
            f"unknown method {name!r}{did_you_mean(name, reg)}; choices: {', '.join(sorted(reg))}"
        )
    return reg[name]


def resolve(selector: str, extra: dict[str, Any] | None = None) -> tuple[MethodEntry, Any]:
    """The registry entry and the validated Config for a selector."""
    name, params = parse_selector(selector)
    entry = get_method(name)
    overrides = {**entry.overrides, **(extra or {}), **params}
    return entry, entry.cls.make_config(overrides)
