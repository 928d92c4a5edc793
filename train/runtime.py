"""Process plumbing of a training run: multi-host start, the workdir, small atomic writes,
SIGINT / SIGTERM, printing and the progress bar, closing grain iterators."""

from __future__ import annotations

import os
import pathlib
import signal
import sys
import threading
from typing import Any

import jax

from train.errors import WorkdirError, WriteFailedError, failure_reason


def maybe_initialize_distributed() -> None:
    """Call ``jax.distributed.initialize()`` when launched as one process of a multi-host job.

    Detected launchers: ``JAX_COORDINATOR_ADDRESS`` (+ ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID``), SLURM (``SLURM_NTASKS`` > 1) and Open MPI
    (``OMPI_COMM_WORLD_SIZE`` > 1). Single-process runs do nothing.
    """
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs: dict[str, Any] = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"]}
        if env.get("JAX_NUM_PROCESSES"):
            kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
        if env.get("JAX_PROCESS_ID"):
            kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
        jax.distributed.initialize(**kwargs)
    elif int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        jax.distributed.initialize()


def prepare_workdir(workdir: pathlib.Path) -> None:
    """Create ``workdir`` and check that it is a writable folder (else one WorkdirError)."""
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir {str(workdir)!r} is a file, not a folder; pass the path of "
                           "a folder (it is created if missing)")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create --workdir {str(workdir)!r}: {failure_reason(e)}; "
                           "pass a folder you can write to") from None
    probe = workdir / f".write_test_{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(f"--workdir {str(workdir)!r} is not writable: {failure_reason(e)}; "
                           "fix its permissions or pass another folder") from None


def write_text(path: pathlib.Path, text: str) -> None:
    """Write a small file atomically (temp + rename); OSError -> one WriteFailedError."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        raise WriteFailedError(f"could not write {path}: {failure_reason(e)}; free disk space "
                               "or fix the folder, then rerun the same command") from None


def append_line(path: pathlib.Path, line: str) -> None:
    """Append one line to ``path``; OSError -> one WriteFailedError."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        raise WriteFailedError(f"could not write {path}: {failure_reason(e)}") from None


class StopRequest:
    """SIGINT / SIGTERM handlers (main thread only) that ask the loop to stop after the current
    step; a second signal stops at once (KeyboardInterrupt). The handler only sets a flag (no
    printing: a handler that prints while the main thread prints raises a reentrancy error)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Printer:
    """print() on process 0 only, flushed; through tqdm.write while a progress bar is shown."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(f"[train] {msg}")
        else:
            print(f"[train] {msg}", flush=True)


class _NoProgress:
    """Stand-in for tqdm when the bar is off: progress shows up in the log lines only."""

    n = 0  # completed steps, as tqdm's ``n``

    def update(self, n: int) -> None:
        self.n += n

    def set_postfix(self, **kw: Any) -> None:
        pass

    def write(self, msg: str) -> None:
        print(msg, flush=True)

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, total: int, initial: int) -> Any:
    """A tqdm bar of completed steps on stderr, or a silent stand-in with the same methods."""
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm  # noqa: PLC0415  (training-only dependency)
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=2.0,
                smoothing=0.1, file=sys.stderr)


def close_iterator(it: Any) -> None:
    """Stop a grain iterator's worker processes and free their shared memory now (not at
    interpreter exit, where a half torn-down grain leaks the prefetched batches' shared memory
    with one warning each). grain 0.2's ``DataLoaderIterator`` has no ``close()``: close the
    dataset iterator it wraps."""
    for target in (it, getattr(it, "_iterator", None)):
        close = getattr(target, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # noqa: BLE001
                pass
            break
    # grain unlinks the shared memory of consumed batches in a background thread pool; wait for
    # it here, since at interpreter exit it may no longer run (each block is then "leaked").
    import gc  # noqa: PLC0415
    gc.collect()
    try:
        from grain._src.python.ipc import shared_memory_array  # noqa: PLC0415
        pool = shared_memory_array.SharedMemoryArray._del_thread_pool
        if pool is not None:
            pool.apply(lambda: None)  # one thread, FIFO: earlier deletions are done
    except Exception:  # noqa: BLE001  (another grain version: best effort)
        pass
