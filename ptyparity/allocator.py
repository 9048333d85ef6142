"""Let a training process reuse the large blocks it frees (glibc's malloc).

glibc serves an allocation above its mmap threshold (128 KiB, raised as the program frees
such blocks, up to 32 MiB) with fresh pages from the kernel, and hands a freed heap top
above its trim threshold back. A training step allocates and frees the same activations
and gradients every step; at the realistic size (N=64, f=2, batch 16) torch's step
page-faulted ~28,000 zeroed pages (~110 MiB) back in every step, none with the
thresholds below (``scripts/bench.py`` measures the step rate with them, as the CLI runs).

:func:`reuse_freed_memory` is called by the ``ptyparity`` entry point and the pipeline's
backend processes, never on import: a program that imports ptyparity keeps its allocator
as it set it. A user who set glibc's malloc tunables in the environment keeps those too.
"""

from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD = 256 << 20  # allocations above this still get their own mapping
TRIM_THRESHOLD = 512 << 20  # free heap kept before glibc returns it to the kernel
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def reuse_freed_memory():
    """Raise glibc's mmap and trim thresholds for this process.

    Returns
    -------
    applied : bool
        False where the C library is not glibc, or where the environment already sets
        glibc's malloc options (``MALLOC_*_`` variables, ``glibc.malloc`` tunables).
    """
    if any(key in os.environ for key in _USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
