"""f-divergences in the variational form of f-GAN (Nowozin, Cseke and Tomioka, NIPS 2016).

For a convex f with f(1) = 0, D_f(P || Q) = E_Q[f(p/q)] is bounded below by
E_P[T(x)] - E_Q[f*(T(x))] for every T with values in dom f*, with equality at
T*(x) = f'(p(x) / q(x)) (paper section 2; Table 1 lists f and T*). f-GAN writes
T = g_f(V) for an unconstrained net V and an output activation g_f into dom f*
(Table 2 lists g_f, f* and dom f*). Each entry below holds those five pieces, plus
f*(g_f(v)) simplified in v, which is what training evaluates: the composite stays
finite where computing g_f first would round into the edge of dom f* in float32
(e.g. Hellinger's 1 - exp(-v) is 1.0 for v > 17, where f*(t) = t / (1 - t) divides
by 0; the composite is exp(v) - 1).

Two conventions, as they come out of the f of Table 1 with D_f(P || Q) = E_Q[f(p/q)]:
  - Pearson: f(u) = (u - 1)^2 gives E_Q[(p/q - 1)^2] = integral of (p - q)^2 / q (Table 1
    writes (q - p)^2 / p, the same f applied the other way round);
  - Jensen-Shannon: f(u) = -(u + 1) log((1 + u) / 2) + u log u gives twice Table 1's
    JS(P, Q) = 1/2 [KL(P || M) + KL(Q || M)], M = (P + Q) / 2 (and D_GAN = 2 JS - log 4).
The tests check every f* against sup_u {u t - f(u)} and every bound at T* against D_f.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcbench.errors import McbenchError, did_you_mean

Fn = Callable[[torch.Tensor], torch.Tensor]
LOG2 = math.log(2.0)


@dataclass(frozen=True)
class Divergence:
    """One row of Nowozin et al.'s Tables 1 and 2."""

    name: str
    title: str
    f: Fn  # generator function on u = p/q > 0 (Table 1)
    f_prime: Fn  # f'(u): the optimal variational function T*(x) = f'(p(x)/q(x))
    activation: Fn  # g_f: R -> dom f* (Table 2)
    conjugate: Fn  # f*(t) on dom f* (Table 2)
    conjugate_of_activation: Fn  # f*(g_f(v)), simplified in v (finite for finite v)
    in_domain: Callable[[torch.Tensor], torch.Tensor]  # t in dom f* (a bool tensor)
    domain: str  # dom f*, for messages and docs


def _js_f(u: torch.Tensor) -> torch.Tensor:
    return -(u + 1) * torch.log((1 + u) / 2) + u * torch.log(u)


DIVERGENCES: dict[str, Divergence] = {
    "kl": Divergence(
        "kl",
        "Kullback-Leibler",
        f=lambda u: u * torch.log(u),
        f_prime=lambda u: 1 + torch.log(u),
        activation=lambda v: v,
        conjugate=lambda t: torch.exp(t - 1),
        conjugate_of_activation=lambda v: torch.exp(v - 1),
        in_domain=lambda t: torch.isfinite(t),
        domain="R",
    ),
    "rkl": Divergence(
        "rkl",
        "reverse Kullback-Leibler",
        f=lambda u: -torch.log(u),
        f_prime=lambda u: -1 / u,
        activation=lambda v: -torch.exp(-v),
        conjugate=lambda t: -1 - torch.log(-t),
        conjugate_of_activation=lambda v: v - 1,
        in_domain=lambda t: t < 0,
        domain="t < 0",
    ),
    "pearson": Divergence(
        "pearson",
        "Pearson chi^2",
        f=lambda u: (u - 1) ** 2,
        f_prime=lambda u: 2 * (u - 1),
        activation=lambda v: v,
        conjugate=lambda t: t**2 / 4 + t,
        conjugate_of_activation=lambda v: v**2 / 4 + v,
        in_domain=lambda t: torch.isfinite(t),
        domain="R",
    ),
    "hellinger": Divergence(
        "hellinger",
        "squared Hellinger",
        f=lambda u: (torch.sqrt(u) - 1) ** 2,
        f_prime=lambda u: 1 - 1 / torch.sqrt(u),
        activation=lambda v: 1 - torch.exp(-v),
        conjugate=lambda t: t / (1 - t),
        conjugate_of_activation=torch.expm1,
        in_domain=lambda t: t < 1,
        domain="t < 1",
    ),
    "js": Divergence(
        "js",
        "Jensen-Shannon (x2)",
        f=_js_f,
        f_prime=lambda u: torch.log(2 * u / (1 + u)),
        activation=lambda v: LOG2 - F.softplus(-v),
        conjugate=lambda t: -torch.log(2 - torch.exp(t)),
        conjugate_of_activation=lambda v: F.softplus(v) - LOG2,
        in_domain=lambda t: t < LOG2,
        domain="t < log 2",
    ),
    "gan": Divergence(
        "gan",
        "GAN (2 JS - log 4)",
        f=lambda u: u * torch.log(u) - (u + 1) * torch.log(u + 1),
        f_prime=lambda u: torch.log(u / (u + 1)),
        activation=lambda v: -F.softplus(-v),
        conjugate=lambda t: -torch.log(1 - torch.exp(t)),
        conjugate_of_activation=F.softplus,
        in_domain=lambda t: t < 0,
        domain="t < 0",
    ),
}


def get_divergence(name: str, method: str = "fgan") -> Divergence:
    """The divergence called `name`, or a one-line McbenchError listing the choices."""
    if name not in DIVERGENCES:
        raise McbenchError(
            f"method {method!r}: unknown divergence {name!r}{did_you_mean(name, DIVERGENCES)}; "
            f"choices: {', '.join(DIVERGENCES)}"
        )
    return DIVERGENCES[name]
