"""Vectorised replicas: R independent seeds of one run trained together.

Every parameter and buffer of a replica net carries a leading dimension R, and so does
every tensor a vectorized method (`Method.vectorized`) handles in `step` (real batch
(R, n, ...), noise (R, n, d), losses (R,)); the Method helpers hide that dimension.
Replica r is initialised, fed and updated exactly as the sequential run of its seed: its
nets are built under that run's own init stream, its noise and data come from that
run's generators, losses are per-replica means whose sum is differentiated (so no
replica's gradient depends on another's), Adam is elementwise and clipping is per
replica. Only the arithmetic is batched (batched matmuls), which is
what the runner gains: one set of kernel launches and Python dispatches for R seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call

from mcbench.methods.blocks.nets import JointMLP, Reshape

ELEMENTWISE = (nn.Tanh, nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Identity)


class StackedLinear(nn.Module):
    """R Linear layers of the same size: weight (R, out, in), bias (R, out); maps
    (R, n, in) to (R, n, out) with one batched matmul."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([lin.weight.detach() for lin in layers]))
        self.bias = (
            nn.Parameter(torch.stack([lin.bias.detach() for lin in layers]))
            if layers[0].bias is not None
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.transpose(1, 2)
        if self.bias is None:
            return torch.bmm(x, w)
        return torch.baddbmm(self.bias.unsqueeze(1), x, w)


class StackedReshape(nn.Module):
    """Reshape's replica form: (R, n, flat) -> (R, n, *shape)."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], *self.shape)


class StackedJoint(nn.Module):
    """JointMLP's replica form: flattens each sample, appends the flat extra input."""

    def __init__(self, nets: Sequence[JointMLP]) -> None:
        super().__init__()
        self.extra_dim = nets[0].extra_dim
        self.net = stack_modules([n.net for n in nets])

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        x = x.flatten(2)
        if self.extra_dim:
            x = torch.cat([x, extra.flatten(2)], dim=2)
        return self.net(x)


class LoopStacked(nn.Module):
    """Any other net (conv nets, batch norm): stacked parameters and buffers, applied
    replica by replica with `functional_call`. Correct for every module; the fast paths
    above are for the MLPs of the 2-D protocol."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        template = modules[0]
        self.stacked = template
        self._names = []
        for name, _ in list(template.named_parameters()) + list(template.named_buffers()):
            *path, leaf = name.split(".")
            owners = [m.get_submodule(".".join(path)) for m in modules]
            values = [getattr(o, leaf).detach() for o in owners]
            value = torch.stack(values)
            if isinstance(getattr(owners[0], leaf), nn.Parameter):
                owners[0]._parameters[leaf] = nn.Parameter(value)
            else:
                owners[0]._buffers[leaf] = value
            self._names.append(name)

    def forward(self, x: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        tensors = {
            **dict(self.stacked.named_parameters()),
            **dict(self.stacked.named_buffers()),
        }
        out = []
        for r in range(x.shape[0]):
            own = {k: v[r] for k, v in tensors.items()}
            out.append(functional_call(self.stacked, own, (x[r], *(e[r] for e in extra))))
        return torch.stack(out)


def stack_modules(modules: Sequence[nn.Module]) -> nn.Module:
    """One replica net from R identically shaped plain nets (replica r = modules[r])."""
    first = modules[0]
    if isinstance(first, nn.Sequential) and all(
        isinstance(m, (nn.Linear, Reshape, *ELEMENTWISE)) for m in first
    ):
        layers: list[nn.Module] = []
        for i, m in enumerate(first):
            if isinstance(m, nn.Linear):
                layers.append(StackedLinear([seq[i] for seq in modules]))
            elif isinstance(m, Reshape):
                layers.append(StackedReshape(m.shape))
            else:
                layers.append(m)
        return nn.Sequential(*layers)
    if isinstance(first, JointMLP):
        return StackedJoint(modules)  # type: ignore[arg-type]
    return LoopStacked(modules)


def replica_builder(
    build: Callable[..., nn.Module], init_states: list[torch.Tensor], device: torch.device
) -> Callable[..., nn.Module]:
    """Wrap a plain net builder: build one net per replica, each under that replica's
    own (CPU) init stream, as its sequential run would, then stack them on `device`."""

    def wrapped(*args, **kwargs) -> nn.Module:
        nets = []
        for r, state in enumerate(init_states):
            torch.set_rng_state(state)
            nets.append(build(*args, **kwargs))
            init_states[r] = torch.get_rng_state()
        return stack_modules(nets).to(device)

    return wrapped


def replica_state(state: dict[str, torch.Tensor], r: int) -> dict[str, torch.Tensor]:
    """Replica r's slice of a replica net's state_dict, keyed as the plain net's."""
    return {k.replace("stacked.", ""): v[r] for k, v in state.items()}


def per_replica_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over all but the leading (replica) dimension: shape (R,)."""
    return x.reshape(x.shape[0], -1).sum(1)


def per_replica(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One value per replica, (R,), shaped to broadcast over `like` (R, ...)."""
    return c.view(-1, *([1] * (like.dim() - 1)))


def clip_grad_norm_(params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ applied to each replica on its own: the global
    norm of replica r's gradients scales only replica r's gradients. Returns (R,)."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([per_replica_sum(g.square()) for g in grads]).sum(0).sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(per_replica(coef, g))
    return norms
