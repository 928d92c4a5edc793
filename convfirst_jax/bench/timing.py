"""Wall-clock timing of jitted functions, done the way latency numbers should be taken.

* Compile time is excluded from the samples and reported on its own (ahead-of-time
  ``jax.jit(f).lower(*args).compile()``), and so is the first call.
* Warm-up calls run before any sample is taken.
* Every sample ends with ``jax.block_until_ready`` (asynchronous dispatch would otherwise
  time only the launch).
* Several input buffers are rotated call after call, so a small working set cannot sit in
  the cache between calls and flatter small sizes.
* A sample may contain ``number`` back-to-back calls (calibrated so one sample lasts at least
  ``min_sample_s``): for microsecond kernels this hides the per-call host overhead, as the
  launches of a real network would.
* The result keeps every raw sample and summarises them by the median and the spread
  (p10/p90 and the inter-quartile range), never by the mean alone.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Timing:
    """Timing of one callable: raw per-call samples (seconds) and their summary.

    Attributes:
      samples_s: per-call latency of every sample (sample wall time / ``number``).
      number: calls per sample.
      compile_s: seconds to lower + compile (0 for non-JAX callables; see ``first_call_s``).
      first_call_s: seconds of the very first call (after compile), reported, never sampled.
      warmup: warm-up calls made before sampling.
      buffers: number of distinct input buffers rotated through.
    """

    samples_s: tuple[float, ...]
    number: int
    compile_s: float
    first_call_s: float
    warmup: int
    buffers: int

    def _pct(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.samples_s), q))

    @property
    def median_s(self) -> float:
        return self._pct(50)

    @property
    def p10_s(self) -> float:
        return self._pct(10)

    @property
    def p90_s(self) -> float:
        return self._pct(90)

    @property
    def q25_s(self) -> float:
        return self._pct(25)

    @property
    def q75_s(self) -> float:
        return self._pct(75)

    @property
    def iqr_s(self) -> float:
        return self.q75_s - self.q25_s

    @property
    def min_s(self) -> float:
        return float(min(self.samples_s))

    @property
    def mean_s(self) -> float:
        return float(np.mean(self.samples_s))

    def summary(self) -> dict[str, Any]:
        """Flat dict for results files (seconds); raw samples included."""
        return {
            "median_s": self.median_s, "p10_s": self.p10_s, "p90_s": self.p90_s,
            "q25_s": self.q25_s, "q75_s": self.q75_s, "iqr_s": self.iqr_s,
            "min_s": self.min_s, "mean_s": self.mean_s, "repeats": len(self.samples_s),
            "number": self.number, "warmup": self.warmup, "buffers": self.buffers,
            "compile_s": self.compile_s, "first_call_s": self.first_call_s,
            "samples_s": list(self.samples_s),
        }


def _check_counts(warmup: int, repeats: int, min_sample_s: float, max_number: int) -> None:
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}; ask for at least one sample")
    if min_sample_s < 0:
        raise ValueError(f"min_sample_s must be >= 0, got {min_sample_s}")
    if max_number < 1:
        raise ValueError(f"max_number must be >= 1, got {max_number}")


def time_callable(
    call: Callable[[int], Any],
    *,
    sync: Callable[[Any], Any],
    buffers: int = 1,
    warmup: int = 3,
    repeats: int = 20,
    min_sample_s: float = 0.0,
    max_number: int = 100,
    compile_s: float = 0.0,
    on_first: Callable[[Any], Any] | None = None,
) -> Timing:
    """Time ``call(i)`` (``i`` = index of the input buffer to use) with a custom sync.

    Framework-neutral core used by :func:`time_jax` and by the torch comparison.
    ``sync(result)`` must wait until the result is computed (``jax.block_until_ready``,
    ``torch.cuda.synchronize``...). The first call is timed separately as ``first_call_s``
    (it may include lazy compilation, e.g. ``torch.compile``); ``on_first(result)``, if
    given, receives that call's result (for a numerical cross-check without recompiling).
    """
    _check_counts(warmup, repeats, min_sample_s, max_number)
    if buffers < 1:
        raise ValueError(f"buffers must be >= 1, got {buffers}")
    clock = time.perf_counter
    k = 0

    first_out: list[Any] = []

    def run(n: int) -> float:
        nonlocal k
        t0 = clock()
        out = None
        for _ in range(n):
            out = call(k % buffers)
            k += 1
        sync(out)
        dt = clock() - t0
        if k == 1:  # the very first call: keep its result for on_first
            first_out.append(out)
        return dt

    first_call_s = run(1)
    if on_first is not None:
        on_first(first_out[0])
    first_out.clear()
    for _ in range(warmup):
        run(1)
    # Calibrate the calls per sample from one more (warm) call.
    one = run(1)
    number = 1
    if min_sample_s > 0 and one < min_sample_s:
        number = int(min(max_number, math.ceil(min_sample_s / max(one, 1e-9))))
    samples = tuple(run(number) / number for _ in range(repeats))
    return Timing(samples_s=samples, number=number, compile_s=compile_s,
                  first_call_s=first_call_s, warmup=warmup, buffers=buffers)


def time_jax(
    fn: Callable[..., Any],
    arg_sets: Sequence[tuple],
    *,
    warmup: int = 3,
    repeats: int = 20,
    min_sample_s: float = 0.0,
    max_number: int = 100,
    on_first: Callable[[Any], Any] | None = None,
) -> Timing:
    """Compile ``fn`` ahead of time, then time it over the rotated ``arg_sets``.

    Args:
      fn: a traceable function (it is wrapped in ``jax.jit``; a jitted function works too).
      arg_sets: one tuple of arguments per input buffer; all must have the same shapes and
        dtypes (they share one compiled executable). Rotating >1 set defeats caches.
      warmup, repeats, min_sample_s, max_number, on_first: see :func:`time_callable`.

    Returns:
      :class:`Timing` whose ``compile_s`` is the lower+compile time, excluded from samples.
    """
    if not arg_sets:
        raise ValueError("arg_sets is empty; pass at least one tuple of arguments")
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    t0 = time.perf_counter()
    compiled = jitted.lower(*arg_sets[0]).compile()
    compile_s = time.perf_counter() - t0
    arg_sets = [tuple(a) for a in arg_sets]
    return time_callable(lambda i: compiled(*arg_sets[i]), sync=jax.block_until_ready,
                         buffers=len(arg_sets), warmup=warmup, repeats=repeats,
                         min_sample_s=min_sample_s, max_number=max_number,
                         compile_s=compile_s, on_first=on_first)


def auto_buffers(bytes_per_set: int, cache_bytes: int, *, lo: int = 2, hi: int = 16) -> int:
    """How many input sets to rotate so together they exceed twice the last-level cache."""
    if bytes_per_set <= 0:
        return lo
    return int(min(hi, max(lo, math.ceil(2 * cache_bytes / bytes_per_set))))


def tree_nbytes(tree: Any) -> int:
    """Total bytes of the arrays in a pytree."""
    return int(sum(getattr(a, "nbytes", 0) for a in jax.tree_util.tree_leaves(tree)))
