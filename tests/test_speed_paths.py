"""The faster paths of the 2-D updates compute what the plain ones do (issue 16)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mcbench.methods.blocks.nets import ACTIVATIONS, FastTanh, fast_tanh, mlp
from mcbench.methods.blocks.unroll import adam_eps_inside_

# Absolute error bound of 2 sigmoid(2x) - 1 against torch.tanh in float32: two ulps of 1.
TANH_ATOL_F32 = 2.4e-7


@pytest.mark.parametrize(
    ("dtype", "atol"), [(torch.float32, TANH_ATOL_F32), (torch.float64, 1e-15)]
)
def test_fast_tanh_agrees_with_tanh_over_the_whole_range(dtype, atol):
    x = torch.cat(
        [
            torch.linspace(-50, 50, 1_000_001, dtype=dtype),
            torch.logspace(-30, 1, 10_000, dtype=dtype),
            -torch.logspace(-30, 1, 10_000, dtype=dtype),
            torch.tensor([0.0, torch.finfo(dtype).max, -torch.finfo(dtype).max], dtype=dtype),
        ]
    )
    err = (fast_tanh(x) - torch.tanh(x)).abs().max().item()
    assert err <= atol, err
    assert fast_tanh(x).abs().max() <= 1


def test_fast_tanh_special_values():
    x = torch.tensor([float("inf"), float("-inf"), float("nan")])
    y = fast_tanh(x)
    assert y[0] == 1 and y[1] == -1 and torch.isnan(y[2])


def test_fast_tanh_first_and_second_derivatives_are_tanh_s():
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fast_tanh, (x,))
    assert torch.autograd.gradgradcheck(fast_tanh, (x,))
    # exactly tanh's derivatives at the same point: 1 - y^2 and -2 y (1 - y^2)
    (g,) = torch.autograd.grad(fast_tanh(x).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    y = torch.tanh(x.detach())
    torch.testing.assert_close(g.detach(), 1 - y * y)
    torch.testing.assert_close(h, -2 * y * (1 - y * y))


def test_fast_tanh_layers_are_an_option_and_still_tanh_layers():
    net = mlp(2, 1, (8, 8), "tanh-fast")
    acts = [m for m in net.modules() if isinstance(m, nn.Tanh)]
    assert len(acts) == 2 and all(isinstance(m, FastTanh) for m in acts)
    exact = mlp(2, 1, (8, 8), "tanh")  # the protocol's: torch's own
    assert not any(isinstance(m, FastTanh) for m in exact.modules())
    assert ACTIVATIONS["tanh"] is nn.Tanh


def _loop_adam_eps_inside_(opt: torch.optim.Adam) -> None:
    """The per-parameter loop adam_eps_inside_ replaced: the reference it must equal."""
    with torch.no_grad():
        for group in opt.param_groups:
            b1, b2 = group["betas"]
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = opt.state[p]
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float32)
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                t = int(st["step"])
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.lerp_(p.grad, 1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                bc1, bc2 = 1 - b1**t, 1 - b2**t
                p.sub_(lr * (m / bc1) / ((v + eps) / bc2).sqrt())


def test_foreach_eps_inside_adam_equals_the_loop_bit_for_bit():
    torch.manual_seed(0)
    net_a = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2), nn.Linear(2, 1))
    net_b = copy.deepcopy(net_a)
    opt_a = torch.optim.Adam(net_a.parameters(), lr=3e-3, betas=(0.5, 0.999))
    opt_b = torch.optim.Adam(net_b.parameters(), lr=3e-3, betas=(0.5, 0.999))
    x = torch.randn(64, 3)
    for i in range(6):
        for net, opt, step in (
            (net_a, opt_a, adam_eps_inside_),
            (net_b, opt_b, _loop_adam_eps_inside_),
        ):
            opt.zero_grad(set_to_none=True)
            net(x).square().mean().backward()
            if i in (1, 2):  # the last layer skips steps: parameters at different step counts
                net[3].weight.grad = None
                net[3].bias.grad = None
            step(opt)
    for pa, pb in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert torch.equal(pa, pb)
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["step"], sb["step"])
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_training_keeps_freed_memory_in_the_heap(monkeypatch):
    """The runner sets glibc's thresholds once per process (mcbench.run.steady); where the
    C library is not glibc it says False and training goes on."""
    from mcbench.run import steady

    assert steady.keep_freed_memory() in (True, False)
    assert steady.keep_freed_memory.cache_info().currsize == 1  # once per process
    monkeypatch.setattr(steady.ctypes.util, "find_library", lambda name: None)
    steady.keep_freed_memory.cache_clear()
    try:
        assert steady.keep_freed_memory() is False
    finally:
        steady.keep_freed_memory.cache_clear()


def test_protocol_adam_steps_strided_gradients_right():
    """Problem.adam stays unfused: torch 2.13's CPU fused Adam steps a non-contiguous
    gradient (a transposed replica weight's) as if it were contiguous."""
    from mcbench.run.runner import RunSpec, build

    m, _, _ = build(RunSpec("gan", "ring", 0, 1, 1, 1), torch.device("cpu"))
    assert not m.opt_g.defaults.get("fused") and not m.opt_d.defaults.get("fused")
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(4, 3))
    start = p.detach().clone()
    g = torch.randn(3, 4).t()  # a transposed, non-contiguous gradient
    opt = m.problem.adam([p], 1e-3)
    p.grad = g
    opt.step()
    # Adam's first step from zero moments: lr * g / (|g| + eps), elementwise
    torch.testing.assert_close(p.detach(), start - 1e-3 * g / (g.abs() + 1e-8))
