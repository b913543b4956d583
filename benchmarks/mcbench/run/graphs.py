"""Whole-step CUDA graph capture of a method's update.

An eager LBT update launches thousands of small kernels; on a GPU their launch cost,
not the arithmetic, sets the pace. Captured once as a CUDA graph, the whole update
(inner loops, unroll, optimiser steps) replays as one launch. What capture needs, and
how the harness provides it:
  - static shapes and addresses: the real batch is copied into one static input tensor;
    the losses come back in static output tensors, read only at evaluation points;
  - capturable optimisers: `Problem.capturable` makes `Problem.adam` keep its step count
    on the device, and `AdamState.from_optimizer` then carries it as a tensor;
  - random numbers inside the graph: the method's generators are registered with the
    graph, so every replay draws fresh noise and advances them;
  - no host synchronisation in the step (no `.item()`, no data-dependent branch).
Capture is CUDA-only; on a CPU (or when capture fails) the runner steps eagerly.
`Stepper` is the update as the training loop calls it, whichever way it runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from mcbench.run.compiled import CompiledStep
from mcbench.run.progress import log
from mcbench.run.seeds import generators

Step = Callable[[torch.Tensor], dict[str, torch.Tensor]]
GRAPH_WARMUP = 3  # eager updates before a step is captured (optimiser states exist)


def side_stream_step(method) -> Step:
    """`method.step` on a side stream, as the eager updates before capture should run
    (PyTorch's CUDA-graph recipe: libraries set up per-stream state in warm-up, not
    during capture)."""
    side = torch.cuda.Stream()

    def step(real: torch.Tensor) -> dict[str, torch.Tensor]:
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = method.step(real)
        torch.cuda.current_stream().wait_stream(side)
        return out

    return step


def capture_step(method, real: torch.Tensor) -> Step | None:
    """`step(real) -> losses` replaying `method.step` as one CUDA graph, or None where
    capture is impossible (a CPU device). The method must have taken at least one eager
    step (optimiser states and lazy buffers exist) and, for Adam, be built with
    `Problem.capturable`. Capture records the work without running it: the returned
    function's first call performs the captured update on its batch."""
    if real.device.type != "cuda" or not torch.cuda.is_available():
        return None
    static_real = real.detach().clone()
    graph = torch.cuda.CUDAGraph()
    for g in generators(method):
        if g.device.type == "cuda":
            graph.register_generator_state(g)
    torch.cuda.synchronize(real.device)
    with torch.cuda.graph(graph):
        out = method.step(static_real)

    def step(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        static_real.copy_(batch)
        graph.replay()
        return out

    return step


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a timer around an update needs it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stepper:
    """One timed update of `method`: `stepper(real) -> (losses, seconds)`.

    Eager by default. With `graphs`, the first `warmup` updates run eagerly on a side
    stream (`warm`), then the update is captured (`capture`) and replayed. Capture is an
    optimisation, never fatal: where it raises, training goes on eagerly and
    `execution` records why. Capture time is not counted as update time.
    With `compiled`, every update runs the method's functional update compiled
    (mcbench.run.compiled; `graphs` is then ignored): it changes numbers by rounding, so
    it is part of a run's configuration, and a method without one is refused, not run
    eagerly. Compile time is kept out of the update time and recorded in `execution`.
    """

    def __init__(
        self,
        method: Any,
        device: torch.device,
        graphs: bool = False,
        *,
        warmup: int = GRAPH_WARMUP,
        capture: Callable[[Any, torch.Tensor], Step | None] = capture_step,
        warm: Callable[[Any], Step] = side_stream_step,
        name: str = "",
        compiled: bool = False,
    ) -> None:
        self.method, self.device, self.name = method, device, name
        self.execution = "graph" if graphs else "eager"
        self._update: Step = warm(method) if graphs else method.step
        self._capture, self._graphs = capture, graphs and not compiled
        self._warmup, self._calls = warmup, 0
        self._compiled: CompiledStep | None = None
        if compiled:
            self._compiled = CompiledStep(method)
            self._update, self.execution = self._compiled, "compiled"

    def __call__(self, real: torch.Tensor) -> tuple[dict[str, torch.Tensor], float]:
        if self._graphs and self._calls == self._warmup:
            self._capture_now(real)
        if self._compiled is not None and self._calls == 0:
            try:
                seconds = self._compiled.prepare(real)
            except Exception as exc:  # the run fails with a one-line reason, not a dump
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                raise RuntimeError(
                    f"compiling the update failed ({type(exc).__name__}: {first}); "
                    "torch.compile needs a working C++ compiler on a CPU; run without "
                    "--compile to train eagerly"
                ) from exc
            notes = self._compiled.notes()
            self.execution = f"compiled (compiling took {seconds:.0f} s, not timed{notes})"
        self._calls += 1
        t0 = time.perf_counter()
        losses = self._update(real)
        sync(self.device)
        return losses, time.perf_counter() - t0

    def _capture_now(self, real: torch.Tensor) -> None:
        try:
            captured = self._capture(self.method, real)
        except Exception as exc:  # capture is an optimisation: never fatal
            captured = None
            self.execution = f"eager (capture failed: {type(exc).__name__}: {exc})"
            log(f"{self.name}: CUDA graph capture failed, eager instead: {exc}")
        else:
            if captured is None:
                self.execution = "eager (no CUDA graph capture on this device)"
        self._update = captured or self.method.step
