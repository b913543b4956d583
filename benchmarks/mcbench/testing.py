"""The method contract as a test: `check_method(MyMethod)` in a plugin's own test suite.

Why: a method can train and print plausible numbers while breaking what the harness
promises about every run (the same seed gives the same numbers, a killed run resumes
to the numbers of an uninterrupted one, R replicas are R sequential runs). Those breaks
show up weeks later as results nobody can reproduce; these checks find them in seconds,
with a few updates on a small problem, on the CPU.

    from mcbench.testing import check_method

    def test_my_method_keeps_the_contract():
        check_method(MyMethod)                       # every check, on `ring`

Each check is also its own function (`check_finite_losses`, ...; CHECKS lists them) and
raises `ContractError` (an AssertionError) whose one-paragraph message names the check,
the method, what differed and how such a method is usually fixed.

A class that is not in the registry (a plugin under development, a class defined in a
test) is registered for the duration of the call under its `name` (or, when another
class holds that name, a free name derived from it) and removed afterwards, so every
check runs through the harness's own `build`, `build_group` and `train`. Checks run on
`device` (CPU by default, where "the same numbers" means bit for bit); the caller's
global RNG states are restored when the call returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from mcbench.datasets import get_dataset
from mcbench.errors import McbenchError
from mcbench.methods.blocks.nets import MLPFamily
from mcbench.plugin.method import Method, Problem, is_rng, rng_state
from mcbench.plugin.registry import MethodEntry, methods, resolve
from mcbench.run.runner import RunSpec, build, build_group, train

__all__ = [
    "CHECKS",
    "ContractError",
    "ContractReport",
    "check_builds",
    "check_checkpoint",
    "check_determinism",
    "check_finite_losses",
    "check_method",
    "check_no_global_rng",
    "check_replicas",
    "check_sample_shape",
    "is_vectorized",
    "tiny_problem",
]

# Check key -> its title in messages, in the order check_method runs them.
CHECKS: dict[str, str] = {
    "builds": "builds through the harness",
    "finite_losses": "finite losses",
    "sample_shape": "sample shape",
    "determinism": "same seed, same numbers",
    "global_rng": "no draw from the global RNG",
    "checkpoint": "checkpoint round trip",
    "replicas": "replicas equal sequential",
}

SAMPLE_N = 13  # samples drawn by the checks (odd: no method may assume an even count)
SAMPLE_SEED = 12345  # the stream `sample` is given, the same for every seed and replica

HINTS: dict[str, str] = {
    "builds": "The harness builds a method as cls(problem, cfg) after seeding the global "
    "stream; __init__ must build its nets through `problem` and hold only state a "
    "checkpoint can save (nets, optimisers, torch.Generators, tensors, lists of tensors, "
    "plain numbers and strings; `not_state` for constants construction rebuilds).",
    "finite_losses": "`step` must return a non-empty dict of detached tensors (return "
    "loss.detach(), never loss.item()): scalars for one seed, shape (R,) per-replica means "
    "(self.mean) with replicas; a loss that is NaN or inf within a few updates usually "
    "means a log of 0, a wrong sign or a far too large learning rate.",
    "sample_shape": "`sample(n, rng)` must return n finite samples shaped like the data, "
    "(n, *dataset.shape), drawn with `rng` (the default Method.sample does this for the "
    "generator in self.G; override generator_module() if it lives elsewhere).",
    "determinism": "Every random number must come from the streams the harness seeds "
    "(self.randn / self.rand, problem.noise, problem.spawn_rng()), never from an "
    "unseeded torch.Generator, time, os.urandom or a hash of an object's id; nets are "
    "built in __init__ from the global stream the harness seeds for initialisation.",
    "global_rng": "During `step`, `sample` and `diagnostics` a method must not draw from "
    "torch's, numpy's or Python's global generators (torch.randn/rand/randint/randperm "
    "without generator=, dropout, np.random.*, random.*): draw from self.randn / self.rand "
    "or pass generator=...; otherwise replicas and resumed runs get other numbers.",
    "checkpoint": "A resumed run must continue bit for bit: everything `step` depends on "
    "must be in state_dict() / extra_state() (nets, optimisers, streams, counters, lists "
    "of tensors); override extra_state / load_extra_state for state the base class cannot "
    "see, keep no state outside the instance (module-level dicts, class attributes), and "
    "let saving a checkpoint change nothing.",
    "replicas": "With `vectorized = True` replica r must be the run of its seed: take the "
    "batch size from self.num_samples(x), split with self.split, reduce losses with "
    "self.mean (never .mean() over the whole tensor: it mixes replicas), address feature "
    "dimensions from the end, backpropagate the sum (self.minimize) and clip with "
    "self.clip_grad_norm_; or set `vectorized = False` and run one seed at a time.",
}


RAISED = "The method's own exception is chained to this error: its traceback shows where."


class ContractError(AssertionError):
    """A failed contract check: `check` is its key in CHECKS, `method` the name (or
    selector) the method was checked under."""

    def __init__(self, check: str, method: str, message: str) -> None:
        super().__init__(message)
        self.check = check
        self.method = method


@dataclass
class ContractReport:
    """What `check_method` checked (each passed check: what it compared) and skipped."""

    method: str  # the registry name or selector the checks trained
    cls: type[Method]
    dataset: str
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        lines = [f"{self.cls.__qualname__} ({self.method!r}) on {self.dataset}:"]
        for key, details in self.checks.items():
            shown = ", ".join(f"{k}={v}" for k, v in details.items())
            lines.append(f"  ok       {CHECKS[key]}: {shown}")
        for key, why in self.skipped.items():
            lines.append(f"  skipped  {CHECKS[key]}: {why}")
        lines.append(f"  {self.seconds:.1f} s")
        return "\n".join(lines)


def tiny_problem(
    data_shape: tuple[int, ...] = (2,),
    latent: int = 3,
    hidden: tuple[int, ...] = (6,),
    batch: int = 16,
    seed: int = 0,
    lr_g: float = 1e-3,
    lr_d: float = 1e-3,
    real: Any = None,
) -> Problem:
    """A Problem small enough for a method's unit tests (finite differences over every
    weight, closed forms): tanh MLPs of `hidden` widths, nets initialised under
    `torch.manual_seed(seed)`, the method's stream seeded seed + 2, real data
    `real(n, generator)` (default standard normal) from a stream seeded seed + 1."""
    nets = MLPFamily(data_shape, hidden, "tanh")
    torch.manual_seed(seed)
    data_rng = torch.Generator().manual_seed(seed + 1)
    draw = real or (lambda n, g: torch.randn(n, *data_shape, generator=g))
    return Problem(
        data_shape=tuple(data_shape),
        latent_dim=latent,
        device=torch.device("cpu"),
        rng=torch.Generator().manual_seed(seed + 2),
        lr_g=lr_g,
        lr_d=lr_d,
        betas=(0.5, 0.999),
        batch_size=batch,
        generator=nets.generator,
        critic=nets.critic,
        encoder=nets.encoder,
        mlp=nets.mlp,
        sample_real=lambda n: draw(n, data_rng),
    )


def finite_differences(
    fn: Callable[[], torch.Tensor], params: list[torch.Tensor], h: float = 1e-6
) -> torch.Tensor:
    """Central differences of the scalar `fn()` in every entry of `params` (in
    `parameters_to_vector` order), the parameters restored afterwards: what a method's
    gradient is tested against. `fn` runs with autograd on, so it may itself take
    gradients (a gradient penalty does)."""
    theta = parameters_to_vector(params).detach().clone()
    out = torch.empty_like(theta)
    for i in range(theta.numel()):
        values = []
        for sign in (1, -1):
            shifted = theta.clone()
            shifted[i] += sign * h
            with torch.no_grad():
                vector_to_parameters(shifted, params)
            values.append(float(fn().detach()))
        out[i] = (values[0] - values[1]) / (2 * h)
    with torch.no_grad():
        vector_to_parameters(theta, params)
    return out


def is_vectorized(cls: type[Method]) -> bool:
    """Whether the class may train as vectorised replicas (`vectorized`, formerly
    `replicas`: either is read while both names exist)."""
    flag = getattr(cls, "vectorized", None)
    if flag is None:
        flag = getattr(cls, "replicas", False)
    return bool(flag)


# -- the public checks ----------------------------------------------------------------


def check_method(
    method: type[Method] | str,
    *,
    dataset: str = "ring",
    steps: int = 3,
    replicas: int = 3,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    eval_samples: int = 64,
    device: str | torch.device = "cpu",
    rtol: float = 1e-4,
    atol: float = 1e-5,
    checks: Iterable[str] | None = None,
) -> ContractReport:
    """Run the contract checks (all of CHECKS, or `checks`) on a Method subclass or a
    registry selector (``"pacgan[m=3]"``); raise ContractError at the first failure.

    `steps` updates per run (at least 2: the checkpoint check resumes in the middle),
    seeds `seed`, `seed + 1`, ...; `replicas` seeds for the replicas check, run only for
    classes that declare `vectorized = True`; `rtol`/`atol` its tolerance (batched
    matmuls round differently, so replicas match to rounding, not bit for bit).
    """
    keys = list(CHECKS) if checks is None else list(checks)
    unknown = [k for k in keys if k not in CHECKS]
    if unknown:
        raise ValueError(f"unknown checks {unknown}; choices: {', '.join(CHECKS)}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (the checkpoint check resumes midway), got {steps}")
    opts = _Options(
        dataset=dataset,
        steps=steps,
        replicas=replicas,
        seed=seed,
        params=dict(params or {}),
        eval_samples=eval_samples,
        device=torch.device(device),
        rtol=rtol,
        atol=atol,
    )
    t0 = time.perf_counter()
    with _caller_rng_kept(), _registered(method) as (selector, cls):
        session = _Session(selector, cls, opts)
        report = ContractReport(selector, cls, dataset)
        for key in keys:
            if key == "replicas" and (why := _why_no_replicas(cls, replicas)):
                report.skipped[key] = why
                continue
            report.checks[key] = _RUNNERS[key](session)
    report.seconds = time.perf_counter() - t0
    return report


def check_builds(method: type[Method] | str, **options: Any) -> dict[str, Any]:
    """The harness builds the method for one seed (its state one a checkpoint can hold)."""
    return _one("builds", method, options)


def check_finite_losses(method: type[Method] | str, **options: Any) -> dict[str, Any]:
    """Every loss `step` returns over `steps` updates is a finite, detached scalar."""
    return _one("finite_losses", method, options)


def check_sample_shape(method: type[Method] | str, **options: Any) -> dict[str, Any]:
    """`sample(n, rng)` after a few updates: shape (n, *dataset.shape), finite."""
    return _one("sample_shape", method, options)


def check_determinism(method: type[Method] | str, **options: Any) -> dict[str, Any]:
    """Two builds with one seed give identical losses and samples; another seed gives
    other samples."""
    return _one("determinism", method, options)


def check_no_global_rng(method: type[Method] | str, **options: Any) -> dict[str, Any]:
    """`step`, `sample` and `diagnostics` leave torch's, numpy's and Python's global RNG
    states unchanged (construction may draw from them: the harness seeds them)."""
    return _one("global_rng", method, options)


def check_checkpoint(method: type[Method] | str, **options: Any) -> dict[str, Any]:
    """A run resumed from the runner's checkpoint midway ends with the losses, metrics,
    samples and method state of an uninterrupted run, bit for bit."""
    return _one("checkpoint", method, options)


def check_replicas(method: type[Method] | str, **options: Any) -> dict[str, Any]:
    """R replicas stepped together give each seed its sequential run's losses (to
    `rtol`/`atol`) and samples of the same shape; raises ContractError if the class is
    not vectorised."""
    opts = {"replicas": 3, **options}
    name = method if isinstance(method, str) else method.__qualname__
    with _registered(method) as (_, cls):
        why = _why_no_replicas(cls, opts["replicas"])
    if why:
        raise ContractError("replicas", name, f"check 'replicas equal sequential': {why}")
    return _one("replicas", method, opts)


def _one(key: str, method: type[Method] | str, options: dict[str, Any]) -> dict[str, Any]:
    return check_method(method, checks=[key], **options).checks[key]


def _why_no_replicas(cls: type[Method], replicas: int) -> str | None:
    if not is_vectorized(cls):
        return "the class does not declare vectorized = True (it runs one seed at a time)"
    if replicas < 2:
        return f"replicas={replicas}: at least 2 are needed to compare"
    return None


# -- what the checks share ---------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    dataset: str
    steps: int
    replicas: int
    seed: int
    params: dict[str, Any]
    eval_samples: int
    device: torch.device
    rtol: float
    atol: float


@dataclass
class _Trace:
    """One seed built and stepped `steps` times the way the runner does, then sampled
    and asked for diagnostics, with the global RNG watched around each call. The first
    failure of each phase is kept, so every check reports only what concerns it."""

    losses: list[dict[str, torch.Tensor]] = field(default_factory=list)
    samples: torch.Tensor | None = None
    state: dict[str, str] = field(default_factory=dict)  # attribute -> how it is saved
    build_error: str | None = None
    step_error: str | None = None
    sample_error: str | None = None
    cause: BaseException | None = None  # what the method raised, chained to the failure
    loss_problem: str | None = None
    rng_problem: str | None = None


class _Session:
    """The method under test and the runs its checks share (one trace per seed)."""

    def __init__(self, selector: str, cls: type[Method], opts: _Options) -> None:
        self.selector, self.cls, self.opts = selector, cls, opts
        self._traces: dict[tuple[int, int], _Trace] = {}

    def spec(self, seed: int, eval_every: int | None = None) -> RunSpec:
        o = self.opts
        every = eval_every or o.steps
        return RunSpec(self.selector, o.dataset, seed, o.steps, every, o.eval_samples, o.params)

    def fail(self, check: str, detail: str, hint: str | None = None) -> ContractError:
        o = self.opts
        label = f"{self.selector!r} ({self.cls.__module__}.{self.cls.__qualname__})"
        msg = (
            f"mcbench check_method: check '{CHECKS[check]}' failed for method {label} on "
            f"{o.dataset} (seed {o.seed}, {o.steps} updates): {detail.rstrip('.')}. "
            f"{hint or HINTS[check]}"
        )
        return ContractError(check, self.selector, msg)

    def trace(self, seed: int, copy: int = 0) -> _Trace:
        """The run of `seed` (`copy` > 0: another, independent build of it)."""
        if (seed, copy) not in self._traces:
            self._traces[seed, copy] = self._run(seed)
        return self._traces[seed, copy]

    def require(self, check: str, tr: _Trace, *phases: str) -> None:
        """Fail `check` if the trace's build (or one of `phases`) raised."""
        for phase in ("build", *phases):
            error = getattr(tr, f"{phase}_error")
            if error:
                hint = HINTS["builds"] if phase == "build" else RAISED
                raise self.fail(check, error, hint) from tr.cause

    def _run(self, seed: int) -> _Trace:
        tr = _Trace()
        dev = self.opts.device
        try:
            method, _, _ = build(self.spec(seed), dev)
            check_state = getattr(method, "check_state", None)
            tr.state = dict(check_state()) if callable(check_state) else {}
        except Exception as exc:
            tr.build_error, tr.cause = f"building seed {seed} raised {_exc(exc)}", exc
            return tr
        batch = method.problem.batch_size
        for t in range(1, self.opts.steps + 1):
            real = method.problem.sample_real(batch)
            before = _global_rng(dev)
            try:
                losses = method.step(real)
            except Exception as exc:
                tr.step_error, tr.cause = f"update {t} of seed {seed} raised {_exc(exc)}", exc
                return tr
            tr.rng_problem = tr.rng_problem or _rng_moved(before, dev, f"update {t} (`step`)")
            tr.loss_problem = tr.loss_problem or _loss_problem(losses, (), f"update {t}")
            tr.losses.append(_clone_losses(losses))
        before = _global_rng(dev)
        try:
            out = method.sample(SAMPLE_N, torch.Generator(dev).manual_seed(SAMPLE_SEED))
            tr.samples = out.detach().clone() if isinstance(out, torch.Tensor) else out
        except Exception as exc:
            tr.sample_error, tr.cause = f"sample({SAMPLE_N}, rng) raised {_exc(exc)}", exc
            return tr
        tr.rng_problem = tr.rng_problem or _rng_moved(before, dev, "`sample`")
        before = _global_rng(dev)
        with contextlib.suppress(Exception):  # a diagnostics bug is not this module's
            method.diagnostics()
        tr.rng_problem = tr.rng_problem or _rng_moved(before, dev, "`diagnostics`")
        return tr


# -- 0. builds ----------------------------------------------------------------------------


def _builds(s: _Session) -> dict[str, Any]:
    tr = s.trace(s.opts.seed)
    s.require("builds", tr)
    return {"seed": s.opts.seed, "state": tr.state or None}


# -- 1. finite losses --------------------------------------------------------------------


def _loss_problem(losses: Any, shape: tuple[int, ...], where: str) -> str | None:
    """What is wrong with one update's losses (None: nothing)."""
    if not isinstance(losses, Mapping) or not losses:
        return (
            f"{where}: `step` returned {type(losses).__name__} {losses!r:.80}, not a non-empty dict"
        )
    for k, v in losses.items():
        if not isinstance(v, torch.Tensor):
            return f"{where}: loss {k!r} is a {type(v).__name__}, not a tensor"
        if v.requires_grad or v.grad_fn is not None:
            return f"{where}: loss {k!r} is not detached (it holds the autograd graph)"
        if tuple(v.shape) != shape:
            return f"{where}: loss {k!r} has shape {tuple(v.shape)}, expected {shape}"
        if not torch.isfinite(v).all():
            return f"{where}: loss {k!r} is {v.tolist()}"
    return None


def _finite_losses(s: _Session) -> dict[str, Any]:
    tr = s.trace(s.opts.seed)
    s.require("finite_losses", tr, "step")
    if tr.loss_problem:
        raise s.fail("finite_losses", tr.loss_problem)
    return {"updates": s.opts.steps, "losses": sorted(tr.losses[0])}


# -- 2. sample shape ---------------------------------------------------------------------


def _sample_shape(s: _Session) -> dict[str, Any]:
    tr = s.trace(s.opts.seed)
    s.require("sample_shape", tr, "step", "sample")
    want = (SAMPLE_N, *_data_shape(s.opts.dataset))
    x = tr.samples
    if not isinstance(x, torch.Tensor):
        raise s.fail("sample_shape", f"sample({SAMPLE_N}, rng) returned {type(x).__name__}")
    if tuple(x.shape) != want:
        raise s.fail(
            "sample_shape", f"sample({SAMPLE_N}, rng) has shape {tuple(x.shape)}, expected {want}"
        )
    if not torch.isfinite(x).all():
        raise s.fail("sample_shape", f"sample({SAMPLE_N}, rng) holds NaN or inf")
    return {"n": SAMPLE_N, "shape": want}


# -- 3. same seed, same numbers ----------------------------------------------------------


def _determinism(s: _Session) -> dict[str, Any]:
    seed, other = s.opts.seed, s.opts.seed + 1
    a, b, c = s.trace(seed), s.trace(seed, copy=1), s.trace(other)
    for tr in (a, b, c):
        s.require("determinism", tr, "step", "sample")
    for t, (la, lb) in enumerate(zip(a.losses, b.losses, strict=True), 1):
        if set(la) != set(lb):
            raise s.fail(
                "determinism",
                f"two builds of seed {seed} return losses {sorted(la)} and {sorted(lb)} "
                f"at update {t}",
            )
        for k in la:
            if not _identical(la[k], lb[k]):
                raise s.fail(
                    "determinism",
                    f"two builds of seed {seed} give different losses: at update {t} "
                    f"{k!r} is {la[k].tolist()} in one and {lb[k].tolist()} in the other",
                )
    if not _identical(a.samples, b.samples):
        raise s.fail(
            "determinism", f"two builds of seed {seed} give the same losses but different samples"
        )
    if isinstance(a.samples, torch.Tensor) and _identical(a.samples, c.samples):
        raise s.fail(
            "determinism",
            f"seeds {seed} and {other} give identical samples after {s.opts.steps} updates",
            "The method ignores the harness's seed: it must build its nets from the global "
            "stream the harness seeds for initialisation (not under a torch.manual_seed of "
            "its own) and draw its noise from self.randn / problem.noise.",
        )
    return {"seeds": [seed, other], "updates": s.opts.steps, "compared": "losses, samples"}


# -- 4. no draw from the global RNG ------------------------------------------------------

_RNG_NAMES = {
    "torch": "torch's global generator",
    "cuda": "torch's global CUDA generator",
    "numpy": "numpy's global generator (np.random)",
    "python": "Python's `random` module",
}


def _global_rng(device: torch.device) -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _rng_moved(before: dict[str, Any], device: torch.device, where: str) -> str | None:
    after = _global_rng(device)
    moved = []
    for k, a in before.items():
        b = after[k]
        if k == "numpy":
            same = a[0] == b[0] and np.array_equal(a[1], b[1]) and tuple(a[2:]) == tuple(b[2:])
        elif isinstance(a, torch.Tensor):
            same = torch.equal(a, b)
        else:
            same = a == b
        if not same:
            moved.append(_RNG_NAMES[k])
    return f"{where} drew from {' and '.join(moved)}" if moved else None


def _global_rng_check(s: _Session) -> dict[str, Any]:
    tr = s.trace(s.opts.seed)
    s.require("global_rng", tr, "step", "sample")
    if tr.rng_problem:
        raise s.fail("global_rng", tr.rng_problem)
    streams = ["torch", "numpy", "python"] + (["cuda"] if s.opts.device.type == "cuda" else [])
    return {"calls": f"{s.opts.steps} x step, sample, diagnostics", "streams": streams}


# -- 5. checkpoint round trip ------------------------------------------------------------


def _checkpoint(s: _Session) -> dict[str, Any]:
    """Three runs through the runner's `train`, evaluating at every update: plain; with
    a checkpoint at step m = ceil(steps / 2) (the file it leaves holds step m); and a
    fresh process-like rebuild resumed from that file. The second and third must equal
    the first: losses, metrics, diagnostics, final samples and the method's state."""
    steps, seed = s.opts.steps, s.opts.seed
    m = (steps + 1) // 2
    spec = s.spec(seed, eval_every=1)
    log = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="mcbench-check-") as tmp:
        path = Path(tmp) / "checkpoint.pt"
        plain = _train(s, spec, log)
        _ok(s, plain, "the uninterrupted run")
        saved = _train(s, spec, log, checkpoint=path, checkpoint_every=m)
        _ok(s, saved, "the run that writes a checkpoint")
        if not path.exists():
            raise s.fail(
                "checkpoint", f"train(checkpoint=..., checkpoint_every={m}) wrote no checkpoint"
            )
        differs = _run_difference(plain, saved)
        if differs:
            raise s.fail(
                "checkpoint",
                f"writing a checkpoint at step {m} changed the run: {differs}",
                "state_dict() and extra_state() must only read the method: a checkpoint "
                "must not change what the run does next.",
            )
        resumed = _train(s, spec, log, checkpoint=path)
    if resumed[2].get("resumed_from") != [m]:
        said = " ".join(log.getvalue().split())
        said = said if len(said) < 300 else said[:300] + " ..."
        raise s.fail(
            "checkpoint",
            f"the runner did not resume from the checkpoint at step {m} (resumed_from="
            f"{resumed[2].get('resumed_from')}); it said: {said or 'nothing'}",
            "The runner must be able to load what the method saved: checkpoints are read "
            "with torch.load(weights_only=True), so state_dict() / extra_state() may hold "
            "tensors, numbers, strings and lists or dicts of them only, and "
            "load_state_dict / load_extra_state must accept exactly what they returned.",
        )
    _ok(s, resumed, f"the run resumed at step {m}")
    differs = _run_difference(plain, resumed)
    if differs:
        raise s.fail(
            "checkpoint",
            f"resumed at step {m} of {steps}, the run differs from an uninterrupted one: {differs}",
        )
    return {"resumed_at": m, "updates": steps, "compared": "losses, metrics, samples, state"}


def _train(s: _Session, spec: RunSpec, log: io.StringIO, **kwargs: Any) -> tuple[list, Any, dict]:
    try:
        with contextlib.redirect_stderr(log):
            return train(spec, s.opts.device, **kwargs)
    except McbenchError as exc:  # e.g. a checkpoint that refuses state it cannot save
        raise s.fail("checkpoint", f"training with checkpoints raised McbenchError: {exc}") from exc


def _ok(s: _Session, run: tuple[list, Any, dict], what: str) -> None:
    status = run[2]
    if status.get("status") != "ok":
        raise s.fail(
            "checkpoint",
            f"{what} failed at step {status.get('failed_step')}: {status.get('reason')}",
        )


def _run_difference(a: tuple[list, Any, dict], b: tuple[list, Any, dict]) -> str | None:
    """The first difference between two finished runs (rows, method, status), or None."""
    found = []
    rows_a, rows_b = _numbers(a[0]), _numbers(b[0])
    for key in sorted(set(rows_a) | set(rows_b), key=lambda k: (k[0], k[1][:5] != "loss_", k[1])):
        va, vb = rows_a.get(key), rows_b.get(key)
        if not (
            va == vb or (va is not None and vb is not None and math.isnan(va) and math.isnan(vb))
        ):
            step, metric = key
            found.append(f"at step {step} {metric} is {vb} instead of {va}")
            break
    if not _identical(a[2].get("final_samples"), b[2].get("final_samples")):
        found.append("the final samples differ")
    before, after = _state_of(a[1]), _state_of(b[1])
    # numbers and containers first: a dropped counter explains the weights that follow it
    state = _difference(before, after, "", tensors=False) or _difference(before, after, "")
    if state:
        found.append(f"the method's state differs at the end ({state})")
    return "; ".join(found) or None


def _numbers(rows: list[dict]) -> dict[tuple[int, str], float]:
    """(step, metric) -> value, without the timings (they are never equal)."""
    return {(r["step"], r["metric"]): r["value"] for r in rows if r["metric"] != "step_time_ms"}


class _Opaque:
    """A value the state comparison does not look into (functions, datasets, ...)."""

    def __init__(self, obj: Any) -> None:
        self.kind = type(obj).__qualname__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Opaque) and other.kind == self.kind

    def __repr__(self) -> str:
        return f"<{self.kind}>"


def _state_of(method: Any) -> dict[str, Any]:
    """Everything a method instance holds that could decide its next numbers: nets and
    optimisers by state_dict, streams by state, tensors, numbers and containers by value,
    other objects by their attributes (the Problem only by the method's stream)."""
    out: dict[str, Any] = {}
    attrs = vars(method)
    nets = (nn.Module, torch.optim.Optimizer)
    # the method's own counters and containers first: they explain the nets that follow
    for k in sorted(attrs, key=lambda k: isinstance(attrs[k], nets)):
        if k == "problem":
            out["problem.rng"] = _snap(attrs[k].rng, 0)
        else:
            out[k] = _snap(attrs[k], 0)
    return out


def _snap(v: Any, depth: int) -> Any:
    if isinstance(v, nn.Module):
        return {k: t.detach().clone() for k, t in v.state_dict().items()}
    if isinstance(v, torch.optim.Optimizer):
        return _snap(v.state_dict(), depth + 1)
    if is_rng(v):
        return rng_state(v)
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if v is None or isinstance(v, (bool, int, float, complex, str, bytes)):
        return v
    if depth > 4:
        return _Opaque(v)
    if isinstance(v, (list, tuple)):
        return [_snap(x, depth + 1) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _snap(x, depth + 1) for k, x in v.items()}
    if dataclasses.is_dataclass(v) or (hasattr(v, "__dict__") and not callable(v)):
        attrs = vars(v) if hasattr(v, "__dict__") else {}
        return {
            "<type>": type(v).__qualname__,
            **{k: _snap(x, depth + 1) for k, x in attrs.items()},
        }
    return _Opaque(v)


def _difference(a: Any, b: Any, path: str, tensors: bool = True) -> str | None:
    """Where two snapshots differ first ('calls is 1 instead of 3'), or None; with
    `tensors` False, tensors (weights, optimiser moments, streams) are not compared."""
    where = path or "the method"
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            name = f"{path}.{k}" if path else k
            if k not in a or k not in b:
                return f"{name} exists in only one run"
            found = _difference(a[k], b[k], name, tensors)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where} has {len(b)} items instead of {len(a)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _difference(x, y, f"{path}[{i}]", tensors)
            if found:
                return found
        return None
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return None if not tensors or _identical(a, b) else f"{where} (a tensor) differs"
    if type(a) is not type(b):
        return f"{where} is a {type(b).__name__} instead of a {type(a).__name__}"
    same = a == b or (
        isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    )
    return None if same else f"{where} is {b!r:.60} instead of {a!r:.60}"


# -- 6. replicas equal sequential ------------------------------------------------------------


def _replicas(s: _Session) -> dict[str, Any]:
    o = s.opts
    seeds = [o.seed + r for r in range(o.replicas)]
    n_rep = len(seeds)
    try:
        group, _, _ = build_group([s.spec(sd) for sd in seeds], o.device)
    except Exception as exc:
        raise s.fail(
            "replicas", f"build_group of seeds {seeds} raised {_exc(exc)}", RAISED
        ) from exc
    got = []
    for t in range(1, o.steps + 1):
        try:
            losses = group.step(group.problem.sample_real(group.problem.batch_size))
        except Exception as exc:
            raise s.fail(
                "replicas", f"update {t} of {n_rep} replicas raised {_exc(exc)}", RAISED
            ) from exc
        bad = _loss_problem(losses, (n_rep,), f"update {t} of {n_rep} replicas")
        if bad:
            raise s.fail("replicas", bad)
        got.append(_clone_losses(losses))
    rngs = [torch.Generator(o.device).manual_seed(SAMPLE_SEED) for _ in seeds]
    try:
        samples = group.sample(SAMPLE_N, rngs)
    except Exception as exc:
        raise s.fail(
            "replicas",
            f"sample({SAMPLE_N}, rngs) of {n_rep} replicas raised {_exc(exc)}",
            RAISED,
        ) from exc
    want_shape = (n_rep, SAMPLE_N, *_data_shape(o.dataset))
    if not isinstance(samples, torch.Tensor) or tuple(samples.shape) != want_shape:
        shape = (
            tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        )
        raise s.fail(
            "replicas",
            f"sample({SAMPLE_N}, rngs) of {n_rep} replicas has shape {shape}, "
            f"expected {want_shape}",
        )
    if not torch.isfinite(samples).all():
        raise s.fail("replicas", f"sample({SAMPLE_N}, rngs) of {n_rep} replicas holds NaN or inf")
    runs = []
    for sd in seeds:
        runs.append(s.trace(sd))
        s.require("replicas", runs[-1], "step")
    worst_abs = worst_rel = 0.0
    for t, g in enumerate(got, 1):
        for r, (sd, run) in enumerate(zip(seeds, runs, strict=True)):
            w = run.losses[t - 1]
            if set(g) != set(w):
                raise s.fail(
                    "replicas",
                    f"at update {t} replicas return losses {sorted(g)}, the sequential run "
                    f"of seed {sd} {sorted(w)}",
                )
            for k in w:
                a, b = float(g[k][r]), float(w[k])
                diff = abs(a - b)
                if not diff <= o.atol + o.rtol * abs(b):
                    raise s.fail(
                        "replicas",
                        f"at update {t} replica {r} (seed {sd}) has loss {k!r} = {a:.7g}, its "
                        f"sequential run {b:.7g} (|diff| {diff:.3g} > {o.atol} + "
                        f"{o.rtol} x |sequential|)",
                    )
                worst_abs = max(worst_abs, diff)
                worst_rel = max(worst_rel, diff / max(abs(b), 1e-12))
    return {
        "replicas": n_rep,
        "updates": o.steps,
        "max_abs_diff": float(f"{worst_abs:.3g}"),
        "max_rel_diff": float(f"{worst_rel:.3g}"),
    }


_RUNNERS = {
    "builds": _builds,
    "finite_losses": _finite_losses,
    "sample_shape": _sample_shape,
    "determinism": _determinism,
    "global_rng": _global_rng_check,
    "checkpoint": _checkpoint,
    "replicas": _replicas,
}


# -- helpers -------------------------------------------------------------------------------


def _exc(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _clone_losses(losses: Any) -> dict[str, torch.Tensor]:
    """The losses' values, kept past the next update (what is no tensor or number: left
    out; `_loss_problem` reports it)."""
    if not isinstance(losses, Mapping):
        return {}
    ok = (torch.Tensor, int, float)
    return {k: torch.as_tensor(v).detach().clone() for k, v in losses.items() if isinstance(v, ok)}


def _identical(a: Any, b: Any) -> bool:
    """Bit-for-bit equal tensors (NaN where the other has NaN counts as equal)."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return a is None and b is None
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def _data_shape(dataset: str) -> tuple[int, ...]:
    return tuple(get_dataset(dataset).shape)


@contextlib.contextmanager
def _caller_rng_kept() -> Iterator[None]:
    """The checks seed the global generators (as the runner does); give the caller's
    back afterwards so that a test calling check_method keeps its own streams."""
    torch_state, np_state, py_state = (
        torch.get_rng_state(),
        np.random.get_state(),
        random.getstate(),
    )
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


@contextlib.contextmanager
def _registered(method: type[Method] | str) -> Iterator[tuple[str, type[Method]]]:
    """The selector the runner builds `method` from and its class. A registry selector is
    used as it is; a registered class by its name; any other Method subclass is entered
    in the registry for the duration of the block and removed afterwards."""
    if isinstance(method, str):
        entry, _ = resolve(method)
        yield method, entry.cls
        return
    if not (isinstance(method, type) and issubclass(method, Method)):
        raise TypeError(f"check_method takes a Method subclass or a selector, not {method!r}")
    reg = methods()
    own = [n for n, e in reg.items() if e.cls is method and not e.overrides]
    if own:
        name = method.name if method.name in own else own[0]
        yield name, method
        return
    name = _free_name(method, reg)
    origin = f"mcbench.testing ({method.__module__}.{method.__qualname__})"
    reg[name] = MethodEntry(name, method, {}, origin)
    try:
        yield name, method
    finally:
        if name in reg and reg[name].cls is method:
            del reg[name]


def _free_name(cls: type[Method], reg: Mapping[str, Any]) -> str:
    """`cls.name` when free; else one derived from it and the class's name (a test class
    that inherits `name` from a registered method must not shadow it)."""
    base = re.sub(r"[^A-Za-z0-9_.\-]", "-", cls.name or cls.__qualname__) or "method"
    candidates = [base, f"{base}.{re.sub(r'[^A-Za-z0-9_]', '-', cls.__qualname__)}"]
    candidates += [f"{candidates[1]}.{i}" for i in range(2, 1000)]
    return next(c for c in candidates if c not in reg)
