"""Seeds and streams: each purpose of each run (init, data, method noise, evaluation) draws
from its own reproducible stream, so that changing one never shifts another."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, stream: str) -> int:
    """Independent, reproducible seeds per purpose (init, data, method noise, eval)."""
    h = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A fresh stream on `device`: draws made on the device need a generator there."""
    return torch.Generator(device=device).manual_seed(seed)


def generators(method) -> list[torch.Generator]:
    """Every torch.Generator a method draws from in `step`: the problem's streams and
    any generator (or list of them) the method holds."""
    found: list[torch.Generator] = []
    for value in [method.problem.rng, *vars(method).values()]:
        items = value if isinstance(value, list) else [value]
        found += [g for g in items if isinstance(g, torch.Generator) and g not in found]
    return found
