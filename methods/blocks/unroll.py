"""Differentiable optimiser steps, shared by every method that unrolls an inner net.

Unrolled GAN (look-ahead discriminator) and LBT (look-ahead estimator) both need "take K
steps of the inner net's own optimiser and differentiate the outer loss through them".
Parameters travel as a dict (`torch.func.functional_call`), so no method copies
parameter lists by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]


@dataclass
class AdamState:
    """Adam's moments and step count, for a functional (differentiable) update."""

    step: int | torch.Tensor  # a device tensor for capturable optimisers (CUDA graphs)
    exp_avg: Params
    exp_avg_sq: Params
    lr: float
    betas: tuple[float, float]
    eps: float

    @classmethod
    def from_optimizer(cls, module: nn.Module, opt: torch.optim.Adam) -> AdamState:
        """Copy the live optimiser's moments, so the unroll continues where it stands.

        Parameters the optimiser has not stepped yet start with zero moments, exactly as
        `torch.optim.Adam` would.
        """
        group = opt.param_groups[0]
        m: Params = {}
        v: Params = {}
        step = 0
        for name, p in module.named_parameters():
            st = opt.state.get(p, {})
            if "exp_avg" in st:
                m[name] = st["exp_avg"].detach().clone()
                v[name] = st["exp_avg_sq"].detach().clone()
                step = _step_count(st["step"])
            else:
                m[name] = torch.zeros_like(p)
                v[name] = torch.zeros_like(p)
        return cls(step, m, v, group["lr"], tuple(group["betas"]), group["eps"])


def _step_count(step: torch.Tensor | float) -> int | torch.Tensor:
    """Adam's step count as a Python int, except where a capturable optimiser keeps it
    on the GPU: reading it there would synchronise the host and bake the number into a
    captured graph, so the bias corrections are computed on the device instead."""
    if isinstance(step, torch.Tensor) and step.device.type != "cpu":
        return step.detach().clone()
    return int(step)


def adam_step(
    params: Params,
    grads: Params,
    state: AdamState,
    differentiate_second_moment: bool = False,
    eps_inside: bool = False,
) -> tuple[Params, AdamState]:
    """One Adam update as a pure function of (params, grads, state).

    The first moment is differentiated; the second is detached by default, as in the
    LBT authors' code (its square-root makes second-order terms noisy and costly).
    `eps_inside`: the step is m_hat / sqrt(v_hat + eps / bc2), i.e. lr_t * m / sqrt(v + eps)
    with lr_t = lr * sqrt(bc2) / bc1, as the LBT authors' `compute_est_updated_with_Adam`
    (LBT-GAN_smnist.py, LBT_toy.py) computes it; False: torch.optim.Adam's
    m_hat / (sqrt(v_hat) + eps). With eps = 1e-8 inside, the floor is 1e-4, not 1e-8.
    """
    b1, b2 = state.betas
    t = state.step + 1
    bc1, bc2 = _bias_corrections(t, b1, b2)
    names = list(params)
    p = [params[n] for n in names]
    g = [grads[n] for n in names]
    if isinstance(t, torch.Tensor):  # a capturable optimiser's device step: one by one
        m, v, new = _adam_loop(
            p, g, state, names, bc1, bc2, differentiate_second_moment, eps_inside
        )
    else:
        m, v, new = _adam_foreach(
            p, g, state, names, bc1, bc2, differentiate_second_moment, eps_inside
        )
    return (
        dict(zip(names, new, strict=True)),
        AdamState(
            t,
            dict(zip(names, m, strict=True)),
            dict(zip(names, v, strict=True)),
            state.lr,
            state.betas,
            state.eps,
        ),
    )


def _bias_corrections(t: int | torch.Tensor, b1: float, b2: float) -> tuple:
    """Adam's 1 - beta**t for both moments. Compiled, TorchInductor inlines a scalar
    into every elementwise loop that reads it, so `pow` would run in double precision
    once per 8 elements of every parameter (an Adam step of a 128x128 layer took 7x
    longer); a reduction is computed once per loop, so the two values go through one
    (x + x) * 0.5, which is exact, and the result is bit for bit the same."""
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    if isinstance(t, torch.Tensor) and torch.compiler.is_compiling():
        both = torch.stack([bc1, bc2]).unsqueeze(1).expand(2, 2).sum(1) * 0.5
        bc1, bc2 = both[0], both[1]
    return bc1, bc2


def _adam_loop(p, g, state, names, bc1, bc2, second, eps_inside):
    b1, b2 = state.betas
    ms, vs, new = [], [], []
    for name, pi, gi in zip(names, p, g, strict=True):
        m = b1 * state.exp_avg[name] + (1 - b1) * gi
        g2 = gi if second else gi.detach()
        v = b2 * state.exp_avg_sq[name] + (1 - b2) * g2 * g2
        denom = ((v + state.eps) / bc2).sqrt() if eps_inside else (v / bc2).sqrt() + state.eps
        new.append(pi - state.lr * (m / bc1) / denom)
        ms.append(m)
        vs.append(v)
    return ms, vs, new


def _adam_foreach(p, g, state, names, bc1, bc2, second, eps_inside):
    """`_adam_loop`'s arithmetic, operation for operation in the same order (so bit for
    bit its result and its gradients), as one differentiable `torch._foreach_*` call per
    operation for all parameters: an unrolled step of a 14-tensor VAE is then about 12
    dispatches and autograd nodes instead of about 170."""
    b1, b2 = state.betas
    m = torch._foreach_add(
        torch._foreach_mul([state.exp_avg[n] for n in names], b1), torch._foreach_mul(g, 1 - b1)
    )
    g2 = g if second else [gi.detach() for gi in g]
    v = torch._foreach_add(
        torch._foreach_mul([state.exp_avg_sq[n] for n in names], b2),
        torch._foreach_mul(torch._foreach_mul(g2, 1 - b2), g2),
    )
    if eps_inside:
        denom = torch._foreach_sqrt(torch._foreach_div(torch._foreach_add(v, state.eps), bc2))
    else:
        denom = torch._foreach_add(torch._foreach_sqrt(torch._foreach_div(v, bc2)), state.eps)
    step = torch._foreach_div(torch._foreach_mul(torch._foreach_div(m, bc1), state.lr), denom)
    return m, v, torch._foreach_sub(p, step)


def adam_state(opt: torch.optim.Optimizer, p: torch.Tensor, group: dict) -> dict:
    """`opt.state[p]`, created first where `p` has not stepped yet as torch.optim.Adam
    lays it out: zero moments and a zero step count (a float32 tensor, float64 under a
    float64 default dtype; on the device for a capturable optimiser)."""
    st = opt.state[p]
    if not st:
        dev = p.device if group.get("capturable") else torch.device("cpu")
        scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        st["step"] = torch.zeros((), dtype=scalar, device=dev)
        st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return st


@torch.no_grad()
def adam_eps_inside_(opt: torch.optim.Adam) -> None:
    """`opt.step()` with eps inside the square root (`adam_step(eps_inside=True)`), in
    place on the optimiser's own state, so `AdamState.from_optimizer` and checkpoints see
    an ordinary Adam. The LBT authors' estimator updates are their unrolled Adam steps
    assigned back (LBT-GAN_smnist.py, `e_train_op`), so they place eps the same way.

    Every parameter of a group is updated by one `torch._foreach_*` call per operation
    (the same elementwise arithmetic, in the same order, as a loop over parameters, so
    the result is bit for bit a loop's; tested), which saves a Python loop and about ten
    dispatches per parameter on each of LBT's estimator steps."""
    for group in opt.param_groups:
        b1, b2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        for p in params:
            st = adam_state(opt, p, group)
            st["step"] += 1
        by_step: dict[int | torch.Tensor, list[torch.Tensor]] = {}
        for p in params:  # parameters that have stepped equally often update together
            t = _step_count(opt.state[p]["step"])
            by_step.setdefault(t if isinstance(t, int) else id(p), []).append(p)
        for same in by_step.values():
            _adam_eps_inside_foreach(opt, same, b1, b2, lr, eps)


def _adam_eps_inside_foreach(
    opt: torch.optim.Adam, params: list[torch.Tensor], b1: float, b2: float, lr: float, eps: float
) -> None:
    states = [opt.state[p] for p in params]
    grads = [p.grad for p in params]
    ms = [st["exp_avg"] for st in states]
    vs = [st["exp_avg_sq"] for st in states]
    t = _step_count(states[0]["step"])
    torch._foreach_lerp_(ms, grads, 1 - b1)
    torch._foreach_mul_(vs, b2)
    torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    step = torch._foreach_div(ms, bc1)
    torch._foreach_mul_(step, lr)
    denom = torch._foreach_add(vs, eps)
    torch._foreach_div_(denom, bc2)
    torch._foreach_sqrt_(denom)
    torch._foreach_div_(step, denom)
    torch._foreach_sub_(params, step)


def sgd_step(params: Params, grads: Params, lr: float) -> Params:
    """Plain gradient descent, for studies; diverges on sharply fitted VAEs (PROTOCOLS)."""
    return {k: p - lr * grads[k] for k, p in params.items()}


def unroll(
    module: nn.Module,
    loss_fn: Callable[[Callable[..., torch.Tensor]], torch.Tensor],
    state: AdamState,
    steps: int,
    create_graph: bool = True,
    differentiate_second_moment: bool = False,
    eps_inside: bool = False,
) -> Params:
    """Take `steps` differentiable Adam steps of `module` on `loss_fn`; return params.

    `loss_fn(f)` computes the inner loss where `f(*args)` calls `module` with the
    current unrolled parameters. With `create_graph` the result is differentiable with
    respect to anything `loss_fn` reads (generator samples, say) and to the start point.
    `differentiate_second_moment` is passed to `adam_step`: True gives the exact
    derivative of the unrolled result (Unrolled GAN differentiates the whole Adam update).
    `eps_inside` is passed to `adam_step` (the LBT authors' placement of eps).
    """
    params: Params = dict(module.named_parameters())
    for _ in range(steps):
        loss = loss_fn(bind(module, params))
        names = list(params)
        grads = torch.autograd.grad(
            loss.sum(), [params[n] for n in names], create_graph=create_graph
        )
        grad_dict = dict(zip(names, grads, strict=True))
        params, state = adam_step(params, grad_dict, state, differentiate_second_moment, eps_inside)
    return params


def bind(module: nn.Module, params: Params) -> Callable[..., torch.Tensor]:
    """`module` as a function of its inputs, evaluated with `params` in place of its own."""

    def call(*args, **kwargs):
        return functional_call(module, params, args, kwargs)

    return call
