"""The compiled updates' graph rewrites (`mcbench.run.passes`): Eigen's rational tanh
within its stated error of torch.tanh over the whole float32 range, swapped in for the
forward tanh while autograd's derivatives (1 - y^2 of the output) stay as written; and
addmm split into mm + bias where only elementwise operations read it."""

from __future__ import annotations

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from mcbench.methods.blocks.nets import fast_tanh
from mcbench.run.passes import MAX_ERROR, rational_tanh, update_pass

aten = torch.ops.aten


def every_float32(stride: int = 257) -> torch.Tensor:
    """Every `stride`-th non-negative float32 bit pattern (denormals to the largest
    finite value and inf), so the check covers the whole range, not a grid of it."""
    bits = torch.arange(0, 0x7F800001, stride, dtype=torch.int64)
    bits = torch.cat([bits, torch.tensor([0x7F7FFFFF, 0x7F800000])])
    return bits.to(torch.int32).view(torch.float32)


def test_rational_tanh_within_its_stated_error_over_the_whole_range():
    x = every_float32()
    x = torch.cat([x, -x])
    y, want = rational_tanh(x), torch.tanh(x)
    err = (y - want).abs()
    assert err.max().item() <= MAX_ERROR
    assert err.max().item() > 1e-7  # an approximation, not torch's tanh again
    assert y.abs().max().item() <= 1.0
    assert torch.equal(rational_tanh(-x), -y)  # odd, exactly
    small = x.abs() < 1  # no cancellation near 0: relative error stays a few ulp
    assert ((y - want)[small].abs() <= 4e-7 * want[small].abs()).all()
    assert rational_tanh(torch.tensor([float("inf"), -float("inf")])).tolist() == [1.0, -1.0]
    assert rational_tanh(torch.tensor([float("nan")])).isnan().all()


def unrolled_loss(w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor, act=torch.tanh):
    """One differentiable SGD step of a tanh net, then a loss of the stepped net: the
    double backward an LBT update takes through its unroll."""

    def inner(w1: torch.Tensor) -> torch.Tensor:
        return act(act(x @ w1) @ w2).square().mean()

    stepped = w1 - 0.1 * torch.func.grad(inner)(w1)
    return act(act(x @ stepped) @ w2).sum()


def net_args(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(w1, w2, x) of `unrolled_loss`: a 2-32-2 net on a batch of 64."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 32, generator=g, dtype=dtype) * 0.5,
        torch.randn(32, 2, generator=g, dtype=dtype) * 0.5,
        torch.randn(64, 2, generator=g, dtype=dtype) * 2,
    )


def traced(dtype: torch.dtype) -> tuple[torch.fx.GraphModule, tuple]:
    args = net_args(dtype)
    tanh_net = torch.func.grad(lambda w1, w2, x: unrolled_loss(w1, w2, x))
    return make_fx(tanh_net, tracing_mode="fake")(*args), args


def count(gm: torch.fx.GraphModule, op) -> int:
    return sum(n.target is op for n in gm.graph.nodes)


def test_pass_swaps_the_forward_tanh_and_keeps_the_derivatives():
    gm, args = traced(torch.float32)
    want = gm(*args)
    n_tanh, n_back = count(gm, aten.tanh.default), count(gm, aten.tanh_backward.default)
    assert n_tanh >= 4 and n_back >= 4
    update_pass()(gm.graph)
    gm.recompile()
    assert count(gm, aten.tanh.default) == 0
    # the derivatives are still tanh's, written on the (now approximated) output
    assert count(gm, aten.tanh_backward.default) == n_back
    for node in gm.graph.nodes:
        if node.target is aten.tanh_backward.default:
            assert node.args[1].target is aten.where.self  # the approximation's output
    got = gm(*args)
    assert not torch.equal(got, want)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def biased_net_loss(w1, b1, w2, b2, x):
    """A two-layer tanh net with biases (addmm) and a 2-D input and output (the thin
    matmuls of the 2-D protocol), through the same unrolled step."""

    def net(w1: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(torch.tanh(torch.nn.functional.linear(x, w1, b1)), w2, b2)

    stepped = w1 - 0.1 * torch.func.grad(lambda w: net(w).square().mean())(w1)
    return net(stepped).sum()


def test_pass_splits_addmm_and_reshapes_thin_matmuls():
    g = torch.Generator().manual_seed(2)
    args = (
        torch.randn(32, 2, generator=g) * 0.5,
        torch.randn(32, generator=g) * 0.1,
        torch.randn(2, 32, generator=g) * 0.5,
        torch.randn(2, generator=g) * 0.1,
        torch.randn(64, 2, generator=g),
    )
    gm = make_fx(torch.func.grad(biased_net_loss), tracing_mode="fake")(*args)
    want = gm(*args)
    assert count(gm, aten.addmm.default) > 0

    def thin() -> list:
        out = []
        for node in gm.graph.nodes:
            if node.target is aten.mm.default:
                (m, k), n = node.args[0].meta["val"].shape, node.args[1].meta["val"].shape[1]
                if k <= 2 or n <= 2 < m:
                    out.append((m, k, n))
        return out

    assert thin()
    update_pass()(gm.graph)
    gm.recompile()
    # every layer here is read elementwise or is 2 wide; no matmul left with an inner
    # dimension of 2 or a 2-wide output from a long one (MKL's slow cases)
    assert count(gm, aten.addmm.default) == 0
    assert thin() == []
    got = gm(*args)
    assert not torch.equal(got, want)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_pass_leaves_graphs_off_the_cpu_alone():
    """The costs behind the rewrites are a CPU's (SLEEF's tanh, MKL's thin matmuls);
    a graph on another device (meta here, as no GPU is at hand) is left as it is."""
    shapes = [(32, 2), (32,), (2, 32), (2,), (64, 2)]
    args = [torch.zeros(s, device="meta") for s in shapes]
    gm = make_fx(torch.func.grad(biased_net_loss), tracing_mode="fake")(*args)
    ops = (aten.mm.default, aten.addmm.default, aten.tanh.default)
    before = [count(gm, op) for op in ops]
    update_pass()(gm.graph)
    assert [count(gm, op) for op in ops] == before and before[1] > 0 and before[2] > 0


def test_pass_leaves_float64_tanh_alone():
    gm, _ = traced(torch.float64)
    n_tanh = count(gm, aten.tanh.default)
    update_pass()(gm.graph)
    assert count(gm, aten.tanh.default) == n_tanh


def test_pass_identity_enters_the_compile_cache_key():
    a, b = update_pass(), update_pass()
    assert a.uuid() == b.uuid() and isinstance(a.uuid(), bytes | str)


def test_tanh_fast_layers_compile_to_plain_tanh_with_both_derivatives():
    """dynamo drops the second derivative of the eager `tanh-fast` Function inside
    torch.func.grad, so compiled, `fast_tanh` is torch.tanh (which the pass replaces)."""
    w1, w2, x = net_args(torch.float64, seed=1)

    def loss(w1: torch.Tensor, act) -> torch.Tensor:
        return unrolled_loss(w1, w2, x, act)

    want = torch.func.grad(loss)(w1, torch.tanh)
    compiled = torch.compile(torch.func.grad(loss), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(w1, fast_tanh), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.func.grad(loss)(w1, fast_tanh), want, rtol=1e-9, atol=1e-9)
