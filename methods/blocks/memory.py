"""Memory estimates that let a method refuse an impossible size before any allocation."""

from __future__ import annotations

import os

import torch


def memory_available() -> tuple[int, str]:
    """The most memory any device of this machine offers: host RAM available, or a CUDA
    device's total, whichever is larger (a check against impossible configs, not a
    fit test)."""
    try:
        import psutil

        best = (int(psutil.virtual_memory().available), "RAM available")
    except ImportError:
        best = (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"), "RAM available")
    if torch.cuda.is_available():
        total = max(
            torch.cuda.get_device_properties(i).total_memory
            for i in range(torch.cuda.device_count())
        )
        if total > best[0]:
            best = (int(total), "CUDA device memory")
    return best


def size_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError
