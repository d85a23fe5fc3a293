"""Two process settings the scratch core runs best with, made once by ``import minideeplab.scratch``
(``configure()``); each can be turned off from the environment.

**Passive OpenMP waiting** (``passive_openmp_wait``). The scratch core runs two thread pools in one process:
numba's parallel kernels (its OpenMP layer) and NumPy's BLAS (OpenBLAS's own threads). By default an OpenMP
thread that finishes a parallel region spins, waiting for the next one, and keeps its core busy while OpenBLAS's
threads want it: measured on 2 cores, 2 threads, ViT-tiny 224 forward, 404-424 ms as it was, 45 ms with
``OMP_WAIT_POLICY=PASSIVE`` (and 61 ms on numba's ``workqueue`` layer). So it sets ``OMP_WAIT_POLICY=PASSIVE``
unless the environment already sets ``OMP_WAIT_POLICY``. OpenMP reads it when its library loads, which numba does
at its first parallel call: a process that loaded the system's libgomp before importing minideeplab keeps its
policy (torch's own bundled copy is another library and is not affected).

**Keep freed memory for the next array** (``keep_freed_memory``): a NumPy network allocates its large
temporaries afresh on every call. glibc's malloc gives an allocation above ``M_MMAP_THRESHOLD`` pages of its own
(mmap) and hands them back to the kernel when it is freed; it also hands back free memory at the top of its heap
above ``M_TRIM_THRESHOLD``. The next array of that size then touches fresh pages, and each fresh 4 KiB page is a
page fault (the kernel zeroes it). A transformer block at ViT-tiny's width, batch 8, made 3,200 of them a call
(13 MB); torch's, which allocates about as much, 400. Raising both thresholds keeps those pages in the process for
the next call:
measured, 1 thread, ``scratch.vit.block_forward`` in three alternating pairs of processes, 32-40 ms -> 27-31 ms
(0 faults). A CNN at 513x513 hardly notices (v3+ ResNet-50: 4,800 faults in 1.5 s, the same time either way).
The cost: a process keeps up to ``TRIM_THRESHOLD`` of freed memory instead of returning it.

``MINIDEEPLAB_KEEP_FREED_MEMORY=0`` in the environment turns it off; elsewhere than glibc it does nothing.

``minideeplab bench`` runs both sides (scratch and torch, each in its own process) with both settings, so that
each is measured with the same allocator and the same OpenMP policy (torch's times do not get worse with them,
measured).
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["configure", "passive_openmp_wait", "keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

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
        try:  # the symbols already in the process (libc's among them): no library search at import
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, TypeError, AttributeError):  # not glibc (macOS, musl without mallopt, Windows)
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _state["done"] = ok
    return ok


def passive_openmp_wait() -> bool:
    """``OMP_WAIT_POLICY=PASSIVE`` in this process's environment unless it has an ``OMP_WAIT_POLICY``; True where
    it was set here."""
    if "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def configure() -> None:
    """Both settings (``import minideeplab.scratch`` calls it)."""
    passive_openmp_wait()
    keep_freed_memory()
