"""Keep freed memory for the next array: a NumPy network allocates its large temporaries afresh on every call.

glibc's malloc gives an allocation above ``M_MMAP_THRESHOLD`` pages of its own (mmap) and hands them back to the
kernel when it is freed; it also hands back free memory at the top of its heap above ``M_TRIM_THRESHOLD``. The
next array of that size then touches fresh pages, and each fresh 4 KiB page is a page fault (the kernel zeroes
it). A transformer block at ViT-tiny's width, batch 8, made 3,200 of them a call (13 MB); torch's, which
allocates about as much, 400. Raising both thresholds keeps those pages in the process for the next call:
measured, 1 thread, ``scratch.vit.block_forward`` in three alternating pairs of processes, 32-40 ms -> 27-31 ms
(0 faults). A CNN at 513x513 hardly notices (v3+ ResNet-50: 4,800 faults in 1.5 s, the same time either way).
The cost: a process keeps up to ``TRIM_THRESHOLD`` of freed memory instead of returning it.

``import minideeplab.scratch`` calls ``keep_freed_memory()`` once (``MINIDEEPLAB_KEEP_FREED_MEMORY=0`` in the
environment turns it off). ``minideeplab bench`` sets it on both sides, so that each is measured with the same
allocator (torch's time does not change with it, measured). Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

# glibc's malloc.h
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20   # glibc's largest (HEAP_MAX_SIZE / 2 on 64 bits): arrays up to 32 MiB come from the heap
TRIM_THRESHOLD = 512 << 20  # free memory kept at the top of the heap

_state = {"done": None}


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory (the thresholds above); True where it took them. Idempotent;
    ``MINIDEEPLAB_KEEP_FREED_MEMORY=0`` makes it a no-op returning False."""
    if _state["done"] is not None:
        return _state["done"]
    ok = False
    if os.environ.get("MINIDEEPLAB_KEEP_FREED_MEMORY", "1") != "0":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt, Windows)
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _state["done"] = ok
    return ok
