"""Orbax checkpoints of a training run: arrays + a JSON side record, atomic, best-by-top-1 kept.

A checkpoint holds two items:

* ``state``: the :class:`train.state.TrainState` pytree (params, BatchNorm statistics, RNG
  state, optimizer state, EMA, step). Typed PRNG keys are stored as their raw ``uint32`` key
  data and re-wrapped on restore, because array checkpoint formats do not know key dtypes.
* ``meta``: JSON: the data-iterator state (grain ``get_state()``), the FLOPs / wall-time
  counters, the reached-target records and the eval history, so a resumed run continues
  exactly where the killed one stopped.

Orbax writes each step to a temporary directory and renames it when complete, so a run killed
with ``kill -9`` never leaves a half-written checkpoint behind. Retention: the latest
``keep`` checkpoints plus the one with the best eval top-1.

Failures are one line each: a write that fails (disk full, I/O error; also in the background
thread of an async save) raises :class:`train.errors.WriteFailedError` naming the step, the
reason and the last complete checkpoint, which stays; a checkpoint whose tree does not fit the
target (another model or optimizer) raises :class:`train.errors.WorkdirMismatchError`.
orbax's own ERROR log records (tracebacks repeated per thread) are dropped: the same failure
reaches the caller as that one exception.
"""

from __future__ import annotations

import base64
import logging
import pathlib
import shutil
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from train.errors import WorkdirMismatchError, WriteFailedError, failure_reason

STATE, META = "state", "meta"


class _QuietOrbax(logging.Filter):
    """Drop two orbax warnings that are expected here: saves without metrics between evals
    ("Requested `tracked_metric`") and the wait for the previous async save."""

    _NOISE = ("Requested `tracked_metric`", "Waiting for previous save to complete")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "orbax" in record.pathname:
            return False  # re-raised to the caller as one WriteFailedError / mismatch error
        msg = record.getMessage()
        return not any(n in msg for n in self._NOISE)


logging.getLogger("absl").addFilter(_QuietOrbax())


class _QuietAbandonedWrites(logging.Filter):
    """Drop asyncio's "exception was never retrieved" records of checkpoint writes abandoned
    after a failure (logged when their futures are collected, often at exit): the failure has
    reached the caller as one WriteFailedError."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "never retrieved" not in msg:
            return True
        return not ("tensorstore_spec" in msg or "orbax" in msg
                    or _raised_in_checkpoint_code(record.exc_info))


def _raised_in_checkpoint_code(exc_info) -> bool:
    """Whether an exception (or one in its cause / context chain) passed through orbax or
    tensorstore frames: a failed file write of orbax's thread pool names neither in its
    message, only in its traceback."""
    error = exc_info[1] if exc_info else None
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        tb = error.__traceback__
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            if "orbax" in filename or "tensorstore" in filename:
                return True
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
    return False


logging.getLogger("asyncio").addFilter(_QuietAbandonedWrites())
# After a failed write, tensorstore completes the remaining writes of that save on its own
# threads and reports "Event loop is closed" (orbax's loop for the save is already gone) as an
# unraisable exception, and the abandoned write coroutines warn at exit. The failure itself
# reaches the caller as one WriteFailedError; these echoes of it are dropped.
warnings.filterwarnings("ignore", message=r"coroutine 'async_serialize_from_host",
                        category=RuntimeWarning)
_previous_unraisablehook = sys.unraisablehook


def _quiet_unraisablehook(unraisable) -> None:
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
        return
    _previous_unraisablehook(unraisable)


sys.unraisablehook = _quiet_unraisablehook


def _use_single_writer_arrays() -> None:
    """Write each replicated array from one device when this is a single-process run.

    orbax's default on CPU is "replica-parallel" writing: every array replicated over R
    devices is sliced R ways and each device writes its slice. That pays off when R hosts
    share the writing; in one process it only costs R eager slice programs per array (one
    compile each on first use: ~4 s per save of a 2 M-parameter model on 2 CPU devices).
    Called per checkpointer, not at import: ``jax.process_count()`` starts the backend, which
    must wait for ``jax.distributed.initialize()`` in a multi-host job.
    """
    current = ocp.type_handlers.get_type_handler(jax.Array)
    if jax.process_count() > 1 or not getattr(current, "_use_replica_parallel", False):
        return
    # orbax warns on every override; only this one is silenced (a user's own still shows)
    absl_log = logging.getLogger("absl")
    ours = lambda record: "overriding jax.Array" not in record.getMessage()  # noqa: E731
    absl_log.addFilter(ours)
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
            override=True)
    finally:
        absl_log.removeFilter(ours)


@jax.jit
def _snapshot(tree: Any) -> Any:
    """A private device copy of ``tree``, all leaves in one program (one dispatch, not one
    per leaf); shardings are kept."""
    return jax.tree.map(jnp.copy, tree)


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract_key_data(x: Any) -> Any:
    """ShapeDtypeStruct of the raw key data of a (possibly abstract) typed key array."""
    data = jax.eval_shape(jax.random.key_data, x)
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)


def encode_iterator_state(state: Any) -> Any:
    """Make a grain iterator state JSON-serialisable (bytes are base64-wrapped)."""
    if isinstance(state, (bytes, bytearray)):
        return {"__bytes_b64__": base64.b64encode(bytes(state)).decode("ascii")}
    if isinstance(state, Mapping):
        return {str(k): encode_iterator_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [encode_iterator_state(v) for v in state]
    if isinstance(state, np.generic):
        return state.item()
    return state


def decode_iterator_state(state: Any) -> Any:
    """Inverse of :func:`encode_iterator_state`."""
    if isinstance(state, Mapping):
        if set(state) == {"__bytes_b64__"}:
            return base64.b64decode(state["__bytes_b64__"])
        return {k: decode_iterator_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [decode_iterator_state(v) for v in state]
    return state


class Checkpointer:
    """Saves and restores (TrainState, meta) pairs under ``workdir/checkpoints``.

    Args:
      directory: checkpoint root (created if missing).
      keep: how many of the most recent checkpoints to keep (>= 1); the best checkpoint by
        eval top-1 (saved with ``metrics={"top1": ...}``) is kept in addition.
      async_save: write in a background thread (the step loop goes on meanwhile).
    """

    def __init__(self, directory: str | pathlib.Path, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")
        self.directory = pathlib.Path(directory).absolute()
        _use_single_writer_arrays()
        policy = ocm.AnyPreservationPolicy([
            ocm.LatestN(n=keep),
            ocm.BestN(get_metric_fn=lambda m: m["top1"], reverse=False, n=1,
                      keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, best_fn=lambda m: m["top1"], best_mode="max",
            enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=(STATE, META))
        self._pending: int | None = None  # step of the save that may still be writing

    def _write_failed(self, step: int | None, error: BaseException) -> WriteFailedError:
        """One-line error for a failed write; removes the partial (temporary) step folder."""
        try:
            complete = [s for s in self._manager.all_steps() if s != step]
        except Exception:  # noqa: BLE001
            complete = []
        if step is not None:
            for partial in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
                shutil.rmtree(partial, ignore_errors=True)
        kept = (f"the last complete checkpoint is step {max(complete)} (kept)" if complete
                else "no complete checkpoint exists yet")
        what = f"checkpoint step {step}" if step is not None else "a checkpoint"
        return WriteFailedError(
            f"could not write {what} to {self.directory}: {failure_reason(error)}; {kept}; "
            "free disk space or fix the folder, then rerun the same command to resume")

    def check(self) -> None:
        """Raise :class:`WriteFailedError` if a background save has failed."""
        try:
            self._manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            raise self._write_failed(self._pending, e) from None

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, None if there is none."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        return self._manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: Mapping[str, Any],
             metrics: Mapping[str, float] | None = None) -> bool:
        """Save ``state`` and JSON ``meta`` at ``step``; a step already saved is skipped."""
        if step in self._manager.all_steps():
            return False
        self.check()
        # A private copy: the train step donates the live state's buffers, and a background
        # write must never read memory that the next step reuses.
        snapshot = _snapshot(_keys_to_data(state))
        args = ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(snapshot),
            META: ocp.args.JsonSave(dict(meta)),
        })
        try:
            saved = self._manager.save(step, args=args,
                                       metrics=dict(metrics) if metrics is not None else None)
        except Exception as e:  # noqa: BLE001  (the previous async save or this one failed)
            failed = self._pending if self._pending not in (None, *self.all_steps()) else step
            raise self._write_failed(failed, e) from None
        self._pending = step
        return saved

    def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
        """Restore the checkpoint at ``step`` into the structure/shardings of ``target``.

        Args:
          step: a step from :meth:`all_steps`.
          target: a pytree like the saved state (concrete arrays or ShapeDtypeStructs with
            shardings); its typed PRNG keys tell how to re-wrap the stored key data.
        """
        abstract = jax.tree.map(
            lambda x: _abstract_key_data(x) if _is_key(x) else ocp.utils.to_shape_dtype_struct(x),
            target)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**{
                STATE: ocp.args.StandardRestore(abstract),
                META: ocp.args.JsonRestore(),
            }))
        except (ValueError, KeyError, TypeError) as e:
            raise WorkdirMismatchError(
                f"checkpoint step {step} in {self.directory} does not fit this model and "
                f"optimizer ({type(e).__name__}: {str(e).strip().splitlines()[0][:120]}...); "
                "it was written by another model or config: use a new --workdir, or delete "
                "this one to start over") from None
        state = jax.tree.map(
            lambda t, r: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
            if _is_key(t) else r, target, restored[STATE])
        return state, dict(restored[META])

    def quarantine(self, first_bad: int, destination: str | pathlib.Path) -> list[int]:
        """Move the checkpoints with step >= ``first_bad`` to ``destination`` (a diverged run:
        a rerun must resume from the newest checkpoint before the divergence). Returns their
        steps; the rest stay."""
        self.wait()
        moved = []
        for step in sorted(s for s in self._manager.all_steps() if s >= first_bad):
            dest = pathlib.Path(destination) / str(step)
            if dest.exists():
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.directory / str(step)), str(dest))
            moved.append(step)
        if moved:
            self._manager.reload()
        return moved

    def wait(self) -> None:
        """Block until background writes are complete (:class:`WriteFailedError` if one failed)."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._write_failed(self._pending, e) from None

    def close(self) -> None:
        """Wait for background writes (raising :class:`WriteFailedError`), then close."""
        self.wait()
        self._manager.close()

    def close_quietly(self) -> None:
        """Close after a failure elsewhere: never raises, logs nothing."""
        try:
            self._manager.wait_until_finished()
        except Exception:  # noqa: BLE001
            pass
        try:
            self._manager.close()
        except Exception:  # noqa: BLE001
            pass
