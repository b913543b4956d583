"""Pieces for writing a method's update as one pure function (`Method.functional_update`).

Eager PyTorch pays for every operation it dispatches (an LBT update is about 5,800 aten
calls, each with its autograd bookkeeping and allocation). `mcbench run --compile`
removes that cost by compiling the whole update, which torch.compile can only do for a
pure function whose gradients come from `torch.func` (a double backward through an
unroll, as LBT's, cannot be compiled from autograd's `.backward()`). These helpers give
such a function what `Method.minimize`, `clip_grad_norm_` and the optimisers give `step`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from mcbench.errors import McbenchError
from mcbench.methods.blocks.losses import d_loss
from mcbench.methods.blocks.unroll import AdamState, adam_step
from mcbench.plugin import replicas as rep

Params = dict[str, torch.Tensor]
Moments = dict[str, Any]  # {"step": tensor, "exp_avg": Params, "exp_avg_sq": Params}
AdamFn = Callable[[Params, Params, Moments], tuple[Params, Moments]]


def call(module: nn.Module, params: Params, *args: torch.Tensor) -> torch.Tensor:
    """`module(*args)` with `params` in place of its own parameters."""
    return functional_call(module, params, args)


def adam_hyper(opt: torch.optim.Optimizer, name: str = "") -> tuple[float, tuple, float]:
    """(lr, betas, eps) of a plain one-group Adam; anything else is refused, since the
    pure step below would silently drop it."""
    group = opt.param_groups[0]
    plain = (
        isinstance(opt, torch.optim.Adam)
        and len(opt.param_groups) == 1
        and not group.get("weight_decay")
        and not group.get("amsgrad")
        and not group.get("maximize")
    )
    if not plain:
        raise McbenchError(
            f"{name or type(opt).__name__}: --compile supports one-group Adam without "
            "weight decay, amsgrad or maximize"
        )
    return float(group["lr"]), tuple(group["betas"]), float(group["eps"])


def adam(
    opt: torch.optim.Optimizer,
    eps_inside: bool = False,
    lr: float | None = None,
    second_moment: bool = False,
) -> AdamFn:
    """`opt.step()` as a pure function `(params, grads, moments) -> (params, moments)`,
    the arithmetic of `unroll.adam_step` (torch.optim.Adam's to rounding; `eps_inside`:
    the LBT authors' placement). `lr` replaces the optimiser's (an unroll's own rate);
    `second_moment` differentiates the second moment too (an unroll's exact derivative)."""
    lr0, betas, eps = adam_hyper(opt)
    rate = lr0 if lr is None else lr

    def step(params: Params, grads: Params, moments: Moments) -> tuple[Params, Moments]:
        # bias corrections in float64, as torch.optim.Adam's Python floats (1 - 0.999**t
        # in float32 loses 4-5 digits to cancellation at small t)
        step = moments["step"].to(torch.float64)
        state = AdamState(step, moments["exp_avg"], moments["exp_avg_sq"], rate, betas, eps)
        new, s = adam_step(params, grads, state, second_moment, eps_inside)
        return new, {"step": s.step, "exp_avg": s.exp_avg, "exp_avg_sq": s.exp_avg_sq}

    return step


def clip_global_norm(grads: Params, max_norm: float, replicas: bool) -> Params:
    """`Method.clip_grad_norm_` as a pure function: every seed's gradients scaled by
    min(1, max_norm / (their global norm + 1e-6)), as torch.nn.utils.clip_grad_norm_."""
    gs = list(grads.values())
    if replicas:
        norms = torch.stack([rep.per_replica_sum(g.square()) for g in gs]).sum(0).sqrt()
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        return {k: g * rep.per_replica(coef, g) for k, g in grads.items()}
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gs]))
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return {k: g * coef for k, g in grads.items()}


def grad_and_value(loss: Callable[..., torch.Tensor]) -> Callable[..., tuple[Params, Any]]:
    """`loss(params, ...)` (every seed's, shape () or (R,)) -> `(grads, values)`: the
    gradient in `params` of the sum (seeds share no parameters) by `torch.func.grad`,
    and the detached per-seed values for the log."""

    def summed(*args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        value = loss(*args)
        return value.sum(), value.detach()

    return torch.func.grad(summed, has_aux=True)


def critic_loss(D: nn.Module) -> Callable[..., torch.Tensor]:
    """`d_loss` (real labelled 1, fake 0) of the critic `D` with weights `p_d`, as a pure
    function `(p_d, real, fake) -> loss`."""

    def loss(p_d: Params, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return d_loss(call(D, p_d, real), call(D, p_d, fake))

    return loss
