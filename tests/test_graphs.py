"""What CUDA-graph capture needs from a method's update, checked on the CPU.

A captured update may not read tensor values on the host (`.item()`, `float(t)`,
`if t:`, data-dependent shapes): capture would fail, or bake one step's value into every
replay. Nor may it draw from a random stream the harness does not hand to the graph.
Both hold for every method, in both layouts, without a GPU: the update runs under a
dispatch mode that fails on any op that reads a tensor on the host, with Adam's step
count kept as a tensor as a capturable optimiser keeps it. (The optimiser step itself
is torch's, capturable on a GPU, and is left out of the check.)
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mcbench.methods.blocks import unroll
from mcbench.plugin.registry import distinct_methods, get_method
from mcbench.run.runner import RunSpec, build, build_group

CPU = torch.device("cpu")
HOST_READS = {
    torch.ops.aten._local_scalar_dense.default,  # .item(), float(t), int(t), bool(t)
    torch.ops.aten.nonzero.default,  # data-dependent shapes
    torch.ops.aten.masked_select.default,
}


class HostReads(TorchDispatchMode):
    """Records every op that needs a tensor's value on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS and not self.paused:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def checked_step(method, monkeypatch) -> list[str]:
    real = method.problem.sample_real(method.problem.batch_size)
    method.step(real)  # optimiser states exist, as after the runner's eager warm-up
    mode = HostReads()
    for opt in method.optimizers().values():
        original = opt.step

        def step(*a, _original=original, **k):
            mode.paused = True
            try:
                return _original(*a, **k)
            finally:
                mode.paused = False

        monkeypatch.setattr(opt, "step", step)
    # a capturable optimiser keeps its step count on the device: never read it
    monkeypatch.setattr(unroll, "_step_count", lambda s: s.detach().clone())
    host_rng = torch.get_rng_state()
    with mode:
        losses = method.step(real)
    assert torch.equal(torch.get_rng_state(), host_rng), "the update drew from the global RNG"
    assert all(isinstance(v, torch.Tensor) for v in losses.values())
    return mode.seen


@pytest.mark.parametrize("name", sorted({*distinct_methods(), "lbt-implicit"}))
@pytest.mark.parametrize("replicas", [1, 2])
def test_update_reads_nothing_on_the_host(name, replicas, monkeypatch):
    specs = [RunSpec(name, "ring", s, 1, 1, 1) for s in range(replicas)]
    if replicas > 1 and not get_method(name).cls.vectorized:
        pytest.skip("not written for replicas")
    method = build(specs[0], CPU)[0] if replicas == 1 else build_group(specs, CPU)[0]
    method.problem.batch_size = 64  # the check is about ops, not sizes
    assert checked_step(method, monkeypatch) == []


def test_the_check_catches_host_reads(monkeypatch):
    method = build(RunSpec("gan", "ring", 0, 1, 1, 1), CPU)[0]
    method.problem.batch_size = 8
    original = type(method).step

    def step(self, real):
        losses = original(self, real)
        if losses["d"] > 0:  # a data-dependent branch: a host read
            losses["g"] = losses["g"] * float(losses["d"])
        return losses

    monkeypatch.setattr(type(method), "step", step)
    assert len(checked_step(method, monkeypatch)) == 2
