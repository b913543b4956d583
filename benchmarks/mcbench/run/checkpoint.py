"""Checkpoints: when a group saves its state, what the state is, and how it comes back.

A checkpoint holds everything that decides the numbers from here on: the method's nets,
optimisers and own streams, the method and data streams, the global torch, numpy and
Python streams (and CUDA's) that a method or dataset may draw from, and the group's
Progress. So a killed run resumes and ends with the numbers of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mcbench.plugin.method import Rng, rng_state, set_rng_state
from mcbench.run import store as res
from mcbench.run.ledger import Progress


def host_state(device: torch.device) -> dict[str, Any]:
    """Global RNG states a method or dataset may draw from without a generator."""
    st = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # as a tensor: checkpoints load with weights_only, which refuses numpy arrays
        "numpy": [st[0], torch.from_numpy(np.asarray(st[1], dtype=np.int64)), *st[2:]],
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_host_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Checkpointer:
    """A group's checkpoint at `path` (None: never saved), written every `every` steps
    but not at the last one (the finished run is published instead), tagged with the
    configuration `key` so that another configuration's file is never loaded."""

    def __init__(self, path: Path | None, key: str, every: int, device: torch.device) -> None:
        self.path, self.key, self.every, self.device = path, key, every, device

    def due(self, step: int, steps: int) -> bool:
        return self.path is not None and step % self.every == 0 and step < steps

    def save(self, step: int, method: Any, data_rng: Rng, progress: Progress) -> None:
        """Save the state after `step` (which becomes `progress.step`, where a restart
        resumes)."""
        if self.path is None:
            raise ValueError("this group has no checkpoint file")
        progress.step = step
        res.save_checked(
            self.path,
            {
                "key": self.key,
                "progress": dataclasses.asdict(progress),
                "method": method.state_dict(),
                "method_extra": method.extra_state(),
                "rng_method": rng_state(method.problem.rng),
                "rng_data": rng_state(data_rng),
                "rng_host": host_state(self.device),
            },
        )

    def restore(self, method: Any, data_rng: Rng) -> Progress | None:
        """Load the checkpoint into a freshly built `method` and its data stream(s) and
        return its Progress; None when there is none. Raises on a damaged file or one of
        another configuration (the method may then be half-loaded: build it again)."""
        if self.path is None or not self.path.exists():
            return None
        ck = res.load_checked(self.path)
        if ck["key"] != self.key:
            raise ValueError(f"{self.path} belongs to another configuration")
        method.load_state_dict(ck["method"])
        method.load_extra_state(ck["method_extra"])
        set_rng_state(method.problem.rng, ck["rng_method"])
        set_rng_state(data_rng, ck["rng_data"])
        set_host_state(ck["rng_host"], self.device)
        return Progress(**ck["progress"])
