"""`mcbench.run.fast_randn`: compiled updates draw torch.randn's numbers through an
inlined copy of the generator's mt19937 and torch's own Box-Muller (`NormalFill16`).
The routing and the check are tested with a stand-in for the C++ op; the real op is
built (about 45 s) and checked bit for bit in the slow test."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch.utils.cpp_extension import is_ninja_available

from mcbench.run import compiled, fast_randn
from mcbench.run.compiled import CompiledStep
from mcbench.run.runner import RunSpec, build

CPU = torch.device("cpu")


class StandIn:
    """torch.randn's draw into `out`, recording each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, out: torch.Tensor, g: torch.Generator) -> None:
        self.calls.append(tuple(out.shape))
        out.copy_(torch.randn(out.shape, generator=g))


def test_only_the_draws_torch_serves_with_normal_fill_are_taken():
    op = StandIn()
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    with fast_randn.InlineRandn(op):
        got = [
            torch.randn(512, 8, generator=a),
            torch.randn((20, 3), generator=a),
            torch.randn(4, generator=a),  # fewer than 16: torch draws one by one
            torch.randn(100, generator=a, dtype=torch.float64),
            torch.randn(100, generator=a, requires_grad=True),
            torch.randn(100),  # the global generator
        ]
    assert op.calls == [(512, 8), (20, 3)]
    want = [
        torch.randn(512, 8, generator=b),
        torch.randn((20, 3), generator=b),
        torch.randn(4, generator=b),
        torch.randn(100, generator=b, dtype=torch.float64),
        torch.randn(100, generator=b),
    ]
    for x, y in zip(got, want, strict=False):
        assert torch.equal(x.detach(), y)
    assert got[4].requires_grad and torch.equal(a.get_state(), b.get_state())


def test_the_check_refuses_other_numbers():
    assert fast_randn.agrees(StandIn())
    assert not fast_randn.agrees(lambda out, g: out.copy_(torch.rand(out.shape, generator=g)))

    # the right numbers, but the generator left elsewhere
    def one_more(out: torch.Tensor, g: torch.Generator) -> None:
        StandIn()(out, g)
        torch.randn(1, generator=g)

    assert not fast_randn.agrees(one_more)


def test_compiled_updates_draw_through_it(monkeypatch):
    op = StandIn()
    monkeypatch.setattr(fast_randn, "extension", lambda: (op, "inlined"))
    m, ds, rng = build(RunSpec("gan", "ring", 0, 1, 1, 1), CPU)
    step = CompiledStep(m, backend="eager")
    step.rewrites = True  # as with TorchInductor, whose minutes of C++ tests cannot pay
    real = ds.sample(m.problem.batch_size, rng, CPU)
    step.prepare(real)
    op.calls.clear()
    step(real)
    assert op.calls == [(512, m.problem.latent_dim)] * 2
    assert step.notes().endswith("normal draws: inlined")
    assert CompiledStep(m, backend="eager").notes() == ""  # no TorchInductor, no claims
    assert compiled.fast_randn is fast_randn


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("c++") is None or not is_ninja_available(), reason="needs a C++ compiler and ninja"
)
def test_the_built_op_draws_torch_randn_bit_for_bit():
    op, why = fast_randn.extension()
    if torch.backends.cpu.get_cpu_capability() != "AVX2":
        assert op is None and "kernels" in why
        return
    assert op is not None, why
    a, b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    # whole and partial blocks of 16 and of mt19937's 624, and torch's own small draws
    # in between (which leave a cached normal in the generator's state)
    for n in (16, 31, 5, 624, 625, 3, 512 * 256, 623, 512 * 256 + 5, 1249):
        with fast_randn.InlineRandn(op):
            got = torch.randn(n, generator=a)
        assert torch.equal(got, torch.randn(n, generator=b))
        assert torch.equal(a.get_state(), b.get_state())
