"""Steady update times on a CPU: keep freed memory in the process.

An LBT update allocates and frees tensors of up to a few MB hundreds of times. glibc's
malloc hands blocks above its mmap threshold back to the kernel when they are freed,
and trims the heap top above its trim threshold, so the next update faults the same
pages in again (about 400 minor page faults per LBT update on ring, each one a kernel
entry that zeroes a page). On a quiet machine that costs little; with another job on the
next core the faults contend for the memory system and the kernel, which is part of
what made our 20-update intervals vary by up to 1.7x while a graph-mode implementation
(which plans its buffers once) stayed steady. Raising both thresholds keeps the memory
in the heap: about 20 faults per update instead. Numbers are unchanged (allocation only).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 << 20  # blocks up to 64 MB come from the heap, not fresh mappings
TRIM_THRESHOLD = 256 << 20  # the heap top is returned to the kernel above 256 MB free


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's malloc thresholds for this process (once); False where the C library
    is not glibc (macOS, musl) or refuses, which leaves the defaults: only speed differs."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
