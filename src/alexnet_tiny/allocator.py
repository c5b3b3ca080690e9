"""Keep freed memory in the process heap while training on the CPU.

glibc gives every allocation above its mmap threshold (at most 32 MB) pages of its own and returns
them to the kernel on free. AlexNet's fully connected weight gradients (151 MB and 67 MB) are created
afresh by every backward pass, so each training step touches ~54,000 new 4 KiB pages and unmaps
them again in `zero_grad`: about 50 ms of a 280 ms batch-12 step at 224 px on the quiet 2-core VM
this was measured on, more when other processes compete for the cores (BENCHMARKS.md). Inside `retained_heap()` large blocks come from the heap and stay
there when freed, so the next step reuses them without a fault. It changes where memory lives, not
what is computed. Where glibc is absent (macOS, Windows, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # <malloc.h>
# What the settings return to on exit. glibc's own defaults adapt (the mmap threshold rises up to
# 32 MB, trimming at twice it); any mallopt call freezes them, so we restore their upper values.
RESTORE = ((M_MMAP_MAX, 65536), (M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 64 << 20))
_depth = 0
_lock = threading.Lock()


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()


@contextmanager
def retained_heap():
    """Serve large allocations from the heap and never trim it while inside (re-entrant, also as a
    decorator); the settings are process-wide, so nested and concurrent users share one count."""
    if _LIBC is None:
        yield
        return
    global _depth
    with _lock:
        if _depth == 0:
            _LIBC.mallopt(M_MMAP_MAX, 0)
            _LIBC.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for option, value in RESTORE:
                    _LIBC.mallopt(option, value)
