"""LBT with the implicit-function (influence-function) hypergradient instead of unrolling.

LBT's section 4.2 relates the unrolled gradient to the influence function (Koh & Liang,
2017): at an estimator optimum phi*, with L_E = -ELBO(G(z); phi) and L_R = -ELBO(x; phi),

    d L_R(phi*(theta)) / d theta = - d/d theta [ grad_phi L_E(theta, phi) . u ],
    u = (H + damping I)^-1 grad_phi L_R,   H = grad^2_phi L_E  (u held constant).

u comes from a few conjugate-gradient (or Neumann-series) iterations on Hessian-vector
products, so the cost is fixed by `iterations`, not by K (not used here). Per generator
update: M estimator updates as in LBT, then one fresh generated batch for the hypergradient.
The damping keeps the solve defined where the VAE's Hessian is singular or indefinite.
Preset `authors-code` turns on the options shared with `mcbench.methods.lbt` (eps inside
the estimator's Adam square root, Glorot init, the per-dataset estimator settings).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mcbench.errors import McbenchError
from mcbench.methods.lbt import AUTHORS_CODE, LBT, PAPER, LBTConfig
from mcbench.plugin.method import Method, positive
from mcbench.plugin.replicas import per_replica, per_replica_sum

Vec = list[torch.Tensor]


@dataclass
class LBTImplicitConfig(LBTConfig):
    solver: str = "cg"  # "cg" (conjugate gradient) or "neumann"
    iterations: int = 10  # CG iterations or Neumann terms
    damping: float = 1.0  # added to the Hessian's diagonal
    neumann_step: float = 1e-3  # Neumann series step; needs step * ||H + damping|| < 2

    def validate(self, name: str = "lbt-implicit") -> None:
        super().validate(name)
        positive(name, iterations=self.iterations, neumann_step=self.neumann_step)
        if self.damping < 0:
            raise McbenchError(f"method {name!r}: damping must be >= 0, got {self.damping}")
        if self.solver not in SOLVERS:
            raise McbenchError(
                f"method {name!r}: solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}"
            )


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def replica_dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """`_dot` of replica vectors (leading dimension R), one per replica: (R,). CG's step
    sizes must come from each replica's own system, as in its sequential run."""
    return sum(per_replica_sum(x * y) for x, y in zip(a, b, strict=True))


def _scale(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """c * x for a scalar c, or a per-replica (R,) c broadcast over x's other dims."""
    return c * x if c.dim() == 0 else per_replica(c, x) * x


def conjugate_gradient(
    apply: Callable[[Vec], Vec],
    b: Vec,
    iterations: int,
    dot: Callable[[Vec, Vec], torch.Tensor] = _dot,
    **_,
) -> Vec:
    """Solve A u = b for symmetric A given as a product, without host syncs: a direction
    of non-positive curvature (A indefinite) freezes the iterate instead of branching.
    With `dot=replica_dot` it solves R independent block systems, each with its own
    step sizes."""
    u = [torch.zeros_like(x) for x in b]
    r = [x.clone() for x in b]
    d = [x.clone() for x in b]
    rr = dot(r, r)
    for _ in range(iterations):
        ad = apply(d)
        dad = dot(d, ad)
        ok = dad > 0
        alpha = torch.where(ok, rr / torch.where(ok, dad, 1.0), 0.0)
        u = [x + _scale(alpha, y) for x, y in zip(u, d, strict=True)]
        r = [x - _scale(alpha, y) for x, y in zip(r, ad, strict=True)]
        rr_new = dot(r, r)
        beta = torch.where(ok & (rr > 0), rr_new / torch.where(rr > 0, rr, 1.0), 0.0)
        d = [x + _scale(beta, y) for x, y in zip(r, d, strict=True)]
        rr = rr_new
    return u


def neumann(apply: Callable[[Vec], Vec], b: Vec, iterations: int, step: float = 1e-3, **_) -> Vec:
    """A^-1 b ~ step * sum_j (I - step A)^j b: what `iterations` gradient steps of size
    `step` on a quadratic would give, i.e. an SGD unroll of the same length."""
    v = [x.clone() for x in b]
    u = [x.clone() for x in b]
    for _ in range(iterations - 1):
        av = apply(v)
        v = [x - step * y for x, y in zip(v, av, strict=True)]
        u = [x + y for x, y in zip(u, v, strict=True)]
    return [step * x for x in u]


SOLVERS = {"cg": conjugate_gradient, "neumann": neumann}


def implicit_hypergradient(
    inner_loss: torch.Tensor,
    outer_loss: torch.Tensor,
    params: Sequence[torch.Tensor],
    wrt: Sequence[torch.Tensor],
    solver: str = "cg",
    iterations: int = 10,
    damping: float = 1.0,
    neumann_step: float = 1e-3,
    dot: Callable[[Vec, Vec], torch.Tensor] = _dot,
) -> Vec:
    """d outer(phi*(w)) / d w for phi* = argmin inner(w, phi), evaluated at `params`.

    With replicas the losses are (R,) and every tensor has a leading replica dimension:
    replicas share no parameters, so gradients and Hessian-vector products of the
    summed losses are each replica's own, and only CG's dot products (`dot`, e.g.
    `replica_dot`) need to be taken per replica."""
    g_in = torch.autograd.grad(inner_loss.sum(), params, create_graph=True)
    b = list(torch.autograd.grad(outer_loss.sum(), params))

    def apply(v: Vec) -> Vec:  # (H + damping I) v by a Hessian-vector product
        hv = torch.autograd.grad(g_in, params, grad_outputs=v, retain_graph=True)
        return [h + damping * x for h, x in zip(hv, v, strict=True)]

    u = SOLVERS[solver](apply, b, iterations, step=neumann_step, dot=dot)
    # The sum over replicas of their products: each replica's gradient is its own.
    return list(torch.autograd.grad(-_dot(g_in, [x.detach() for x in u]), wrt))


class LBTImplicit(LBT):
    name = "lbt-implicit"
    Config = LBTImplicitConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": PAPER, "authors-code": AUTHORS_CODE}
    defaults_from = "LBT authors' code for the shared parts; solver settings: this harness"
    depth_param = None  # no unroll: the solver's `iterations` set the cost
    functional_update = Method.functional_update  # LBT's unrolls; this one solves

    def dot(self, a: Vec, b: Vec) -> torch.Tensor:
        """Each seed's inner product of two parameter-shaped vectors (CG's step sizes)."""
        return sum(self.sum(x * y) for x, y in zip(a, b, strict=True))

    def generator_grads(self, real: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
        n, cfg = self.num_samples(real), self.cfg
        eps_fake, eps_real = self.split(self.randn(2 * n, self.E.latent_dim), 2)
        inner = -self.mean(self.E(self.G(self.randn(n)), eps_fake))
        outer = -self.mean(self.E(real, eps_real))
        grads = implicit_hypergradient(
            inner,
            outer,
            list(self.E.parameters()),
            list(self.G.parameters()),
            cfg.solver,
            cfg.iterations,
            cfg.damping,
            cfg.neumann_step,
            dot=self.dot,
        )
        return grads, {"elbo_real": -outer.detach()}
