"""Rewrites of a compiled update's graph that TorchInductor does not make on a CPU.

tanh as TensorFlow computes it. torch's float32 tanh (SLEEF's 1-ulp vectorised tanhf)
costs about 3 ns per element on one core of our CPU, ten times a multiply; in a compiled
update of the protocol's tanh nets it was the largest elementwise cost. TensorFlow's
CPU tanh, which the LBT authors' code runs on, is Eigen's rational approximation
(`generic_fast_tanh_float`, Eigen/src/Core/MathFunctionsImpl.h): an odd degree-13
polynomial over an even degree-6 one, of x clamped to +-7.9053 (where float32 tanh
rounds to 1), and x itself below |x| = 0.0004. Compiled, it costs about a quarter of
SLEEF's, and it stays within `MAX_ERROR` (6 ulp near 1, 3e-7 relative below |x| = 1)
of torch.tanh over the whole float32 range (tested).

The rewrite runs after autograd has written the backward: it replaces each float32
`aten.tanh` of the graph by the approximation and leaves the derivatives alone.
Autograd wrote them as tanh's, 1 - y^2 of the output y (and theirs through an unroll),
so a compiled update uses tanh's exact derivative at the approximated value, never the
derivative of the approximation.

A layer's bias added after its matmul. `addmm` first copies the bias into every row of
the output and then accumulates the product onto it; where everything that reads the
output is elementwise (the activation after a layer), `mm` followed by `+ bias` lets the
add ride in the activation's loop instead. TorchInductor makes this rewrite on GPUs
only (`should_prefer_unfused_addmm`); on our CPU the copies were 5% of an LBT update.

The thin matmuls of 2-D data. MKL takes 100 us for the 128 x 512 by 512 x 2 product of
a 2-D output layer's weight gradient, 5x the same product transposed; a matmul with
an inner dimension of at most 2 (a 2-D input layer) is a sum of that many outer
products, which fuses into the loops around it.

Each rewrite changes results only by rounding, and applies to CPU graphs only.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

# Eigen's coefficients (MathFunctionsImpl.h, generic_fast_tanh_float): numerator
# alpha_1 ... alpha_13 (odd powers), denominator beta_0 ... beta_6 (even powers).
ALPHA = (
    4.89352455891786e-03,
    6.37261928875436e-04,
    1.48572235717979e-05,
    5.12229709037114e-08,
    -8.60467152213735e-11,
    2.00018790482477e-13,
    -2.76076847742355e-16,
)
BETA = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
CLAMP = 7.90531110763549805
TINY = 0.0004
MAX_ERROR = 4e-7  # largest |rational_tanh(x) - torch.tanh(x)| over float32 (tested)


def rational_tanh(x: torch.Tensor) -> torch.Tensor:
    """Eigen's (TensorFlow's) float32 tanh, in torch operations that a compiler fuses;
    below |x| = 0.0004 tanh(x) rounds to x, which keeps tiny inputs exact."""
    tiny = x.abs() < TINY
    x = x.clamp(-CLAMP, CLAMP)
    x2 = x * x
    p = x2 * ALPHA[6] + ALPHA[5]
    for a in ALPHA[4::-1]:
        p = x2 * p + a
    q = x2 * BETA[3] + BETA[2]
    for b in BETA[1::-1]:
        q = x2 * q + b
    return torch.where(tiny, x, x * p / q)


SMALL = 2  # a matmul dimension this small is done another way (see `_patterns`)


def _shape(match: Any, name: str) -> tuple[int, ...]:
    return tuple(match.kwargs[name].meta["val"].shape)


def _on_cpu(match: Any, name: str) -> bool:
    """The rewrites answer costs measured on a CPU (SLEEF's tanh, MKL's thin matmuls);
    TorchInductor's GPU code has neither, so GPU graphs are left as they are."""
    return match.kwargs[name].meta["val"].device.type == "cpu"


@functools.cache
def _patterns() -> tuple[Any, Any]:
    """The rewrites, traced once (they import TorchInductor, so not at import time):
    tanh and addmm first, then the matmuls (among them those addmm left)."""
    from torch._inductor import pattern_matcher as pm
    from torch._inductor.utils import is_pointwise_use

    first, second = pm.PatternMatcherPass(), pm.PatternMatcherPass()

    def tanh(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.tanh.default(x)

    def float32(match: Any) -> bool:
        return _on_cpu(match, "x") and match.kwargs["x"].meta["val"].dtype == torch.float32

    def addmm(b: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.addmm.default(b, x, w)

    def mm_add(b: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.mm.default(x, w) + b

    def unfuse(match: Any) -> bool:
        users = match.output_node().users
        elementwise = all(is_pointwise_use(u) for u in users)
        return _on_cpu(match, "x") and (_shape(match, "w")[1] <= SMALL or elementwise)

    def mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.mm.default(x, w)

    def thin_mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if x.shape[1] <= SMALL:  # a sum of K outer products, elementwise
            out = x[:, :1] * w[:1, :]
            for k in range(1, x.shape[1]):
                out = out + x[:, k : k + 1] * w[k : k + 1, :]
            return out
        return torch.ops.aten.mm.default(w.t(), x.t()).t()  # (w^T x^T)^T

    def thin(match: Any) -> bool:
        (m, k), n = _shape(match, "x"), _shape(match, "w")[1]
        return _on_cpu(match, "x") and (k <= SMALL or (n <= SMALL < k and m > SMALL))

    pm.register_replacement(
        tanh, rational_tanh, [torch.empty(8)], pm.fwd_only, first, extra_check=float32
    )
    three = [torch.empty(4), torch.empty(3, 5), torch.empty(5, 4)]
    pm.register_replacement(addmm, mm_add, three, pm.fwd_only, first, extra_check=unfuse)
    two = [torch.empty(3, 5), torch.empty(5, 4)]
    pm.register_replacement(mm, thin_mm, two, pm.fwd_only, second, extra_check=thin)
    return first, second


def update_pass() -> Any:
    """The rewrites as a `post_grad_custom_post_pass` for torch.compile's inductor
    options. Its uuid (the hash of this file) enters TorchInductor's cache key, so code
    compiled with the pass, without it or with an older version are never mixed up."""
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    class UpdatePass(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            for patterns in _patterns():
                patterns.apply(graph)

        def uuid(self) -> Any:
            return get_hash_for_files((__file__,))

    return UpdatePass()
