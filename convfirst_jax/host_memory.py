"""Host memory of XLA:CPU executions: one reused heap instead of a fresh mapping per step.

XLA's CPU runtime gives every execution of a compiled function one temporary block holding
all of its intermediates (269 MB for ConvFirst-atto's train step at batch 64, 64 px), taken
with ``posix_memalign`` on a PJRT worker thread and freed when the execution ends. glibc's
malloc serves a request larger than a thread arena's 64 MiB heap with a fresh ``mmap`` and
unmaps it on ``free``, so every step first page-faults the whole block (67 000 minor faults
per ConvFirst-atto step) and its ops run on memory the kernel has just zeroed.
:func:`reuse_host_memory` sets glibc's malloc to one arena (``M_ARENA_MAX`` 1), no ``mmap``
(``M_MMAP_MAX`` 0) and no trimming below 2 GiB (``M_TRIM_THRESHOLD``): the block then comes
from the main heap and the next step reuses it. Measured in separate processes
(``scripts/ab_host_memory.py``, medians of 3 pairs,
``docs/results/cpu-imagenette-64px/ab_host_memory.md``): the CPU train step (batch 64, 64 px)
of ConvFirst-atto 1.22x faster, ConvNeXt-atto 1.34x, ConvFirst-atto gw8 1.36x, ResNet-18
0.98x (its heap had not settled after 3 warm-up steps); PyTorch's steps gain 1.13-1.53x
from the same setting.

It is process-wide and must run before JAX creates its CPU client (the worker threads keep
the arena they first allocated from), so the command lines call it first: ``python -m train``
and ``python -m convfirst_jax.bench``. Library code never calls it. The cost: the heap keeps
its peak size for the life of the process (freed memory is reused, not returned to the OS).
``CONVFIRST_HOST_MALLOC=system`` in the environment leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
#: Freed memory is returned to the OS only above this much at the top of the heap (2 GiB).
TRIM_THRESHOLD_BYTES = 2**31 - 1
#: The environment variable that opts out (value "system").
OPT_OUT_ENV = "CONVFIRST_HOST_MALLOC"

_status: str | None = None


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc on Linux (the only one with these mallopt options)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):  # musl and others have no glibc version string
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _jax_backend_started() -> bool:
    """Whether JAX has created a backend already (checked only if jax is imported)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge  # noqa: PLC0415
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # another jax: cannot tell, assume not started
        return False


def status() -> str:
    """What :func:`reuse_host_memory` did in this process, one line (for logs and results)."""
    return _status or "off: not set (glibc's default malloc)"


def reuse_host_memory() -> str:
    """Make XLA:CPU's per-execution buffers come from one reused heap (see the module doc).

    Call it at the start of a process, before the first JAX computation. Returns what was
    done, one line: ``"on: ..."``, or ``"off: ..."`` with the reason (not glibc, opted out,
    JAX already started, mallopt refused). Calling it again returns the first answer.
    """
    global _status
    if _status is not None:
        return _status
    if os.environ.get(OPT_OUT_ENV, "").lower() == "system":
        _status = f"off: {OPT_OUT_ENV}=system (glibc's default malloc)"
        return _status
    libc = _glibc()
    if libc is None:
        _status = "off: not glibc on Linux (nothing to change)"
        return _status
    if _jax_backend_started():
        return ("off: JAX's CPU client already exists (its threads keep their arenas); call "
                "convfirst_jax.host_memory.reuse_host_memory() before the first JAX computation")
    done = [libc.mallopt(M_ARENA_MAX, 1), libc.mallopt(M_MMAP_MAX, 0),
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)]
    _status = ("on: one malloc arena, no mmap, trim above 2 GiB" if all(done)
               else "off: glibc's mallopt refused a setting")
    return _status
