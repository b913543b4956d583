"""torch.randn's numbers on a CPU in less than half the time, for compiled updates.

Compiled, drawing an update's noise is the largest cost outside its matmuls: a GAN
update draws 2 x 131,072 normals (about 0.9 ms each draw), an LBT update 2.2 million.
torch fills a float32 tensor with mt19937 uniforms through one out-of-line call per
number, then applies Box-Muller to blocks of 16 (`normal_fill` in
ATen/native/cpu/DistributionTemplates.h). This module draws the same mt19937 outputs
from a copy of the generator's engine in blocks of 624 (its twist and tempering as
loops the compiler vectorises), turns each block into uniforms and normals while it is
in the core's cache (with that header's own Box-Muller, `NormalFill16`, and its
handling of a size that is not a multiple of 16), and writes the engine back:
torch.randn's numbers and the generator's next state, bit for bit, checked against
torch.randn every time the extension is loaded; about 3x sooner on our CPU.

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

NAME = "mcbench_randn2_" + torch.__version__.replace(".", "_").replace("+", "_")

SOURCE = r"""
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/native/cpu/DistributionTemplates.h>
#include <torch/library.h>

namespace {
constexpr int N = 624, M = 397;  // at::mt19937 (ATen/core/MT19937RNGEngine.h)
constexpr uint32_t MATRIX_A = 0x9908b0df, UMASK = 0x80000000, LMASK = 0x7fffffff;

inline uint32_t twist(uint32_t u, uint32_t v) {
  return (((u & UMASK) | (v & LMASK)) >> 1) ^ ((v & 1) ? MATRIX_A : 0);
}

// at::mt19937's next_state as loops without a dependence within a vector's width
void next_state(uint32_t* s) {
  for (int j = 0; j < N - M; ++j) s[j] = s[j + M] ^ twist(s[j], s[j + 1]);
  for (int j = N - M; j < N - 1; ++j) s[j] = s[j + M - N] ^ twist(s[j], s[j + 1]);
  s[N - 1] = s[M - 1] ^ twist(s[N - 1], s[0]);
}

inline void temper(const uint32_t* s, uint32_t* out, int64_t k) {
  for (int64_t j = 0; j < k; ++j) {
    uint32_t y = s[j];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= (y >> 18);
    out[j] = y;
  }
}

// n outputs of at::mt19937's operator() in order, leaving the engine as n calls do
void draw(at::mt19937_data_pod& d, uint32_t* out, int64_t n) {
  for (int64_t i = 0; i < n;) {
    int64_t k;
    if (d.left_ == 1) {  // this call twists; a block of N outputs follows
      next_state(d.state_.data());
      k = std::min<int64_t>(N, n - i);
      temper(d.state_.data(), out + i, k);
      d.next_ = k;
      d.left_ = N - (k - 1);
    } else {
      k = std::min<int64_t>(d.left_ - 1, n - i);
      temper(d.state_.data() + d.next_, out + i, k);
      d.next_ += k;
      d.left_ -= k;
    }
    i += k;
  }
}

// torch's uniform float in [0, 1) from one 32-bit output (at::uniform_real_distribution)
inline float uniform(uint32_t x) {
  return static_cast<float>(x & ((1u << 24) - 1)) * (1.0f / (1 << 24));
}

// torch's normal_fill for a contiguous float32 tensor of at least 16 numbers, in one pass:
// each block of 16 takes the next 16 engine outputs as uniforms and is turned into
// normals by torch's own NormalFill16; where the size is not a multiple of 16, the last
// size % 16 outputs are drawn and dropped (torch writes them and then overwrites them)
// and 16 more give the last 16 numbers, as torch's normal_fill does.
void normal_(at::Tensor out, std::optional<at::Generator> gen) {
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.is_contiguous() && out.is_cpu());
  auto* g = at::check_generator<at::CPUGeneratorImpl>(gen.value());
  std::lock_guard<std::mutex> lock(g->mutex_);
  int64_t size = out.numel();
  TORCH_CHECK(size >= 16);
  float* data = out.data_ptr<float>();
  at::mt19937 engine = g->engine();
  at::mt19937_data_pod d = engine.data();
  at::native::templates::cpu::NormalFill16<float> fill16(0.0f, 1.0f);
  constexpr int64_t B = 16 * 39;  // 624 outputs at a time
  uint32_t bits[B];
  int64_t full = size - size % 16;
  for (int64_t i = 0; i < full;) {
    int64_t k = std::min(B, full - i);
    draw(d, bits, k);
    for (int64_t j = 0; j < k; ++j) data[i + j] = uniform(bits[j]);
    for (int64_t j = 0; j < k; j += 16) fill16(data + i + j);
    i += k;
  }
  if (size % 16 != 0) {
    draw(d, bits, size % 16);  // drawn and overwritten
    draw(d, bits, 16);
    float* last = data + size - 16;
    for (int j = 0; j < 16; ++j) last[j] = uniform(bits[j]);
    fill16(last);
  }
  engine.set_data(d);
  g->set_engine(engine);
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
    for n in (16, 17, 31, 624, 625, 640, 1253, 4099):
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
