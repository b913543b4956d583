"""torch.randn's numbers on a CPU in about half the time, for compiled updates.

Compiled, drawing an update's noise is the largest cost outside its matmuls: a GAN
update draws 2 x 131,072 normals (about 0.9 ms each draw), an LBT update 2.2 million.
torch fills a float32 tensor with mt19937 uniforms through one out-of-line call per
number, then applies Box-Muller to blocks of 16 (`normal_fill` in
ATen/native/cpu/DistributionTemplates.h). This module compiles that same header code
against a copy of the generator's mt19937 engine, called inline, and writes the engine
back: torch.randn's numbers and the generator's next state, bit for bit, checked
against torch.randn every time the extension is loaded.

Only where torch itself runs that code: a CPU on which ATen runs its AVX2 kernels
(elsewhere torch's Box-Muller is another build of the template), and a float32 draw of
at least 16 numbers from an explicit CPU generator. Built once by
torch.utils.cpp_extension (about 45 s on our CPU, cached in ~/.cache/torch_extensions);
where it cannot be built or its check fails, draws stay torch.randn's and
`config.json`'s `execution` says which ran.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

NAME = "mcbench_randn_" + torch.__version__.replace(".", "_").replace("+", "_")

SOURCE = r"""
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/native/cpu/DistributionTemplates.h>
#include <torch/library.h>

namespace {
// torch's CPU generator as normal_fill sees it, with the engine's call inlined
struct InlineEngine {
  std::mutex mutex_;
  at::mt19937 engine;
  uint32_t random() { return engine(); }
  uint64_t random64() {
    uint32_t hi = engine();
    uint32_t lo = engine();
    return (static_cast<uint64_t>(hi) << 32) | lo;
  }
};

void normal_(at::Tensor out, std::optional<at::Generator> gen) {
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.is_contiguous() && out.is_cpu());
  auto* g = at::check_generator<at::CPUGeneratorImpl>(gen.value());
  std::lock_guard<std::mutex> lock(g->mutex_);
  InlineEngine e;
  e.engine = g->engine();
  at::native::templates::cpu::normal_fill<float>(out, 0.0, 1.0, &e);
  g->set_engine(e.engine);
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(NAME, m) {
  m.def("normal_(Tensor(a!) out, Generator? gen) -> ()", &normal_);
}
"""


@functools.cache
def extension() -> tuple[Any | None, str]:
    """(the op `normal_(out, generator)` or None, why): built and checked once."""
    if torch.backends.cpu.get_cpu_capability() != "AVX2":
        return None, f"torch runs its {torch.backends.cpu.get_cpu_capability()} kernels"
    try:
        from torch.utils.cpp_extension import load_inline

        load_inline(
            NAME,
            cpp_sources=SOURCE.replace("NAME", NAME),
            is_python_module=False,
            extra_cflags=["-O3", "-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2"],
        )
        op = getattr(torch.ops, NAME).normal_
    except Exception as exc:  # no compiler, no ninja: torch.randn's draws, slower
        return None, f"not built ({type(exc).__name__})"
    if not agrees(op):
        return None, "its draws differ from torch.randn's"
    return op, "inlined"


def agrees(op: Any) -> bool:
    """Whether `op` draws torch.randn's numbers and leaves the generator where torch.randn
    does, for whole and partial blocks of 16."""
    for n in (16, 17, 1000, 4099):
        a, b = torch.Generator().manual_seed(n), torch.Generator().manual_seed(n)
        want, got = torch.randn(n, generator=a), torch.empty(n)
        op(got, b)
        if not (torch.equal(want, got) and torch.equal(a.get_state(), b.get_state())):
            return False
    return True


class InlineRandn(TorchFunctionMode):
    """Within it, torch.randn calls that torch's `normal_fill` would serve run `op`
    instead; every other call runs as it was."""

    def __init__(self, op: Any) -> None:
        super().__init__()
        self.op = op

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.randn:
            size = _size(args)
            if size is not None and _served(size, kwargs):
                out = torch.empty(size)
                self.op(out, kwargs["generator"])
                return out
        return func(*args, **kwargs)


def _size(args: tuple) -> tuple[int, ...] | None:
    if len(args) == 1 and isinstance(args[0], tuple | list | torch.Size):
        args = tuple(args[0])
    return args if all(isinstance(a, int) for a in args) else None


def _served(size: tuple[int, ...], kwargs: dict) -> bool:
    g = kwargs.get("generator")
    device = kwargs.get("device")
    return (
        isinstance(g, torch.Generator)
        and g.device.type == "cpu"
        and (device is None or torch.device(device).type == "cpu")
        and kwargs.get("dtype") in (None, torch.float32)
        and torch.get_default_dtype() == torch.float32
        and set(kwargs) <= {"generator", "device", "dtype"}
        and math.prod(size) >= 16
    )
