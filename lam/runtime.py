"""Process-level runtime settings that make CPU inference and training fast.

glibc's ``malloc`` serves every allocation above a *dynamic* threshold (128 kB, growing to at most 32 MB)
with a fresh ``mmap`` and gives it back with ``munmap`` when the tensor is freed. A DPA-2 step on a
thousand-atom box allocates and frees hundreds of tensors of 10-500 MB, so every step pays for millions of
page faults (the kernel zeroes each new 4 kB page): measured here, medium float64 on 1,536 atoms of water
spent 34 s of its 49 s in the kernel over 7 steps, and its cost per atom was 2.2x that at 192 atoms.
:func:`configure_allocator` keeps freed memory in the process heap instead (``mallopt``: mmap only above
1 GiB, never trim the heap top, grow it in 256 MB pieces), which removes most of the faults (same case:
2.2x -> 0.95x per atom; see docs/benchmarks.md, "Model speed"). Trimming the top above 1 GiB, the first
setting, still cost a training step of medium float64 on 1,536 atoms 0.3-0.5 million faults (2-3 s in the
kernel, per-atom cost 1.23x that at 192 atoms) whenever the free top of its 10 GB heap passed 1 GiB. The
price is that the resident memory stays at its peak rather than dropping between steps, as PyTorch's CUDA
caching allocator keeps GPU memory; it suits long MD and training runs.

The lam entry points (``LAMCalculator``, the training, MD, evaluation and distillation jobs, the benchmarks)
call it; set ``LAM_MALLOC_TUNING=0`` to keep the system defaults. Other C libraries (musl, macOS, Windows)
are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = -1  # glibc: -1 disables trimming
TOP_PAD = 256 << 20

_state: dict[str, bool] = {}


def configure_allocator(force: bool = False) -> bool:
    """Tune glibc ``malloc`` for large, short-lived tensors (once per process). Returns whether it is in effect.

    A no-op (returning False) off glibc, or when the environment variable ``LAM_MALLOC_TUNING`` is ``0``;
    ``force`` applies the settings again even if an earlier call did.
    """
    if "done" in _state and not force:
        return _state["done"]
    ok = False
    if os.environ.get("LAM_MALLOC_TUNING", "1") != "0" and platform.system() == "Linux" \
            and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            mallopt.restype = ctypes.c_int
            ok = all(mallopt(param, value) == 1 for param, value in (
                (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
        except (OSError, AttributeError):
            ok = False
    _state["done"] = ok
    return ok


def allocator_configured() -> bool:
    """Whether :func:`configure_allocator` has put the tuned settings in effect in this process."""
    return _state.get("done", False)
