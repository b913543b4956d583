"""`mcbench run --compile`: a method's update compiled whole by torch.compile.

A method that defines `functional_update` (mcbench.plugin.method.FunctionalUpdate)
writes its update as one pure function of (weights, Adam moments, real batch, noise).
Each update draws the noise from the method's own streams in `step`'s order and calls
the compiled function on the live nets' weights and the live optimisers' moments,
writing the results into them in place. So everything outside the update (evaluation,
diagnostics, checkpoints, resume, replicas) sees the same nets, optimisers and streams
as in an eager run, and a compiled run differs from the eager one only by the rounding
of reordered float arithmetic and, with TorchInductor, of a cheaper tanh
(`mcbench.run.passes`: TensorFlow's, within 4e-7 of torch's). Compilation happens on
the first update (minutes for LBT on one CPU core the first time, then seconds from
TorchInductor's cache, kept in ~/.cache/mcbench/torchinductor unless
TORCHINDUCTOR_CACHE_DIR says otherwise) and is not counted as update time.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_leaves, tree_map

from mcbench.errors import McbenchError
from mcbench.methods.blocks.unroll import adam_state
from mcbench.plugin.method import compilable, no_functional_update
from mcbench.run import fast_randn
from mcbench.run.passes import update_pass
from mcbench.run.seeds import generators

# weights per net; Adam moments and first step count per optimiser; its other step counts
Live = tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, Any]], dict[str, list]]

BACKEND = "inductor"  # tests set another torch.compile backend (or None: no compiling)


def keep_compiled_code() -> str:
    """Where TorchInductor caches compiled code: TORCHINDUCTOR_CACHE_DIR if set, else
    ~/.cache/mcbench/torchinductor (XDG_CACHE_HOME respected) rather than its default
    under /tmp, which a reboot may wipe: a cold LBT compile takes minutes, a cached one
    seconds."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    # importing TorchInductor writes its default into the variable: that is not a choice
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, os.path.abspath(default_cache_dir())):
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(base, "mcbench", "torchinductor")
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def check_compilable(cls: type, name: str) -> None:
    """Refuse `--compile` for a method class without a functional update, at planning."""
    if not compilable(cls):
        raise no_functional_update(name)


class CompiledStep:
    """`step(real) -> losses` running `method.functional_update()` compiled."""

    def __init__(self, method: Any, backend: str | None = None) -> None:
        self.method = method
        fu = method.functional_update()  # McbenchError where the method has none
        self.noise = fu.noise
        self.live = _live(method, fu.optimized)
        backend = BACKEND if backend is None else backend
        self.fn: Callable = in_place(fu.update)
        self._compiled_for: tuple | None = None
        self.rewrites = backend == "inductor"  # TorchInductor: mcbench.run.passes applies
        self.draws: Any = contextlib.nullcontext()
        self.draws_note = "torch.randn"
        options = None
        if self.rewrites:
            keep_compiled_code()
            # cpp_wrapper: the generated code that calls the update's few hundred kernels
            # and matmuls is C++ rather than Python (5% of a compiled GAN update)
            options = {"post_grad_custom_post_pass": update_pass(), "cpp_wrapper": True}
        if backend != "none":
            self.fn = torch.compile(
                self.fn, backend=backend, fullgraph=True, dynamic=False, options=options
            )

    def prepare(self, real: torch.Tensor) -> float:
        """Compile now, on copies of the state and noise drawn with every stream put
        back afterwards (training is untouched); returns the seconds it took, which the
        harness keeps out of the update time."""
        t0 = time.perf_counter()
        if self.rewrites:
            op, self.draws_note = fast_randn.extension()
            if op is not None:
                self.draws = fast_randn.InlineRandn(op)
        gens = generators(self.method)
        saved = [g.get_state() for g in gens]
        with self.draws:
            noise = self.noise(self.method.num_samples(real))
        for g, st in zip(gens, saved, strict=True):
            g.set_state(st)
        with torch.enable_grad():
            self.fn(tree_map(lambda t: t.clone(), self.live), real.clone(), noise)
        self._compiled_for = _signature(real, noise)
        return time.perf_counter() - t0

    def notes(self) -> str:
        """What `config.json`'s `execution` adds: how tanh and the noise were computed."""
        if not self.rewrites:
            return ""
        return f"; tanh: Eigen's rational approximation; normal draws: {self.draws_note}"

    def __call__(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.draws:  # torch.randn's numbers (mcbench.run.fast_randn)
            noise = self.noise(self.method.num_samples(real))
        # dynamo checks about 400 guards (every weight, moment and module the update
        # closes over) before each call: 0.4 ms, 5% of a compiled GAN update. The nets,
        # optimisers and closures are the ones compiled, so only the batch and the noise
        # could differ; where their shapes are those compiled for, the check is skipped
        same = _signature(real, noise) == self._compiled_for
        with (
            torch.enable_grad(),  # torch.func.grad needs it; the harness may not
            torch.compiler.set_stance("default", skip_guard_eval_unsafe=same),
        ):
            return self.fn(self.live, real, noise)


def _live(method: Any, optimized: dict[str, str]) -> Live:
    """The live weights, Adam moments and step counts the update reads and writes:
    detached views of the nets' parameters and the optimisers' own state tensors
    (each optimiser's first step count stands for all of them; the rest are only
    written). Made once: training writes into these tensors, it never replaces them."""
    nets, opts = method.modules(), method.optimizers()
    params, moments, more_steps = {}, {}, {}
    for opt_name, net in optimized.items():
        opt = opts[opt_name]
        for group in opt.param_groups:  # the first compiled update reads its state
            for p in group["params"]:
                adam_state(opt, p, group)
        named = dict(nets[net].named_parameters())
        if {id(p) for g in opt.param_groups for p in g["params"]} != {
            id(p) for p in named.values()
        }:
            raise McbenchError(
                f"method {method.name!r}: optimiser {opt_name!r} does not step exactly "
                f"the parameters of {net!r}, which --compile needs"
            )
        states = {k: opt.state[p] for k, p in named.items()}
        steps = [st["step"] for st in states.values()]
        params[net] = {k: p.detach() for k, p in named.items()}
        moments[opt_name] = {
            "step": steps[0],
            "exp_avg": {k: st["exp_avg"] for k, st in states.items()},
            "exp_avg_sq": {k: st["exp_avg_sq"] for k, st in states.items()},
        }
        more_steps[opt_name] = steps[1:]
    return params, moments, more_steps


def in_place(update: Callable) -> Callable:
    """`update(params, moments, real, noise) -> (params, moments, losses)` as a function
    of the live state that writes the new weights and moments into it and returns the
    losses. Compiled, the writes are part of the graph: TorchInductor's last kernels
    store into the live tensors, where copying the results back after each call cost 4%
    of a compiled GAN update (60 tensors, one call each)."""

    def run(live: Live, real: torch.Tensor, noise: Any) -> dict[str, torch.Tensor]:
        params, moments, more_steps = live
        new_params, new_moments, losses = update(params, moments, real, noise)
        for net, named in params.items():
            for n, p in named.items():
                p.copy_(new_params[net][n])
        for opt, state in moments.items():
            new = new_moments[opt]
            for key in ("exp_avg", "exp_avg_sq"):
                for n, t in state[key].items():
                    t.copy_(new[key][n])
            for step in (state["step"], *more_steps[opt]):
                step.copy_(new["step"])
        return losses

    return run


def _signature(real: torch.Tensor, noise: Any) -> tuple:
    return tuple((t.shape, t.dtype, t.device) for t in (real, *tree_leaves(noise)))
