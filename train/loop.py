"""The training loop: data-parallel AdamW training with eval, checkpoints and FLOPs-to-target.

Shape of a run (after flax examples/imagenet, rewritten for NNX and a ``jax.set_mesh`` mesh):

1. build the data loaders (``train.data``) and the model (``convfirst_jax.create_model``);
2. replicate the train state over a 1-D device mesh ``("data",)`` and shard every batch on it;
3. compile the train step ahead of time and read its FLOPs from XLA's cost analysis;
4. resume from the newest checkpoint in ``workdir/checkpoints`` if there is one (model,
   optimizer, EMA, data-iterator position, counters), else start fresh;
5. loop: train step, log every ``log_every_steps``, evaluate every ``eval_every_epochs``
   (or ``eval_every_steps``), checkpoint every ``checkpoint_every_steps`` and at each eval;
6. write ``workdir/summary.json`` with the accuracy-complexity record of the run
   (Hernandez & Brown 2020: training FLOPs until each top-1 target is first reached).

Faults (exit codes in train/errors.py): a non-finite loss *or* a non-finite updated state
(params, BN statistics, optimizer moments, EMA) stops the run with :class:`NonFiniteLossError`
before anything is saved, so every checkpoint on disk is finite and the error names the last
one. A failed write (disk full) stops at once with :class:`~train.errors.WriteFailedError`,
keeping the last complete checkpoint. SIGINT / SIGTERM stop after the current step with a
checkpoint of it (:class:`~train.errors.Interrupted`). Resuming a workdir of another model, or
with changed settings unless ``allow_config_change``, is refused
(:class:`~train.errors.WorkdirMismatchError`); an unusable workdir is a
:class:`~train.errors.WorkdirError`.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from convfirst_jax.dtypes import COMPUTE_DTYPES
from convfirst_jax.models.blocks import BLOCK_IMPLS
from train import checkpoint as checkpoint_lib
from train import flops as flops_lib
from train import metrics as metrics_lib
from train import state as state_lib
from train.errors import (
    Interrupted,
    NonFiniteLossError,
    WorkdirError,
    WorkdirMismatchError,
    WriteFailedError,
)

#: Compute dtypes training accepts (names of convfirst_jax.dtypes.COMPUTE_DTYPES): float16 is
#: left out because its narrow exponent needs loss scaling, which this loop does not do.
TRAIN_DTYPES = ("float32", "bfloat16")
BATCH_KEYS = ("image", "label", "valid")


# Config keys that may differ between a run and its resumption without
# ``allow_config_change``: they change what is printed or kept, not what is trained.
RESUME_FREE_KEYS = ("progress_bar", "log_every_steps", "checkpoint_every_steps",
                    "keep_checkpoints", "speed_check_batches", "speed_check_steps",
                    "allow_config_change")
CONFIG_CHANGES_FILE = "config_changes.jsonl"


# ----------------------------------------------------------------------------------------------
# Set-up helpers


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


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raise one ValueError naming the first bad config value and how to fix it."""
    c = config
    if c.dtype not in TRAIN_DTYPES:
        raise ValueError(f"config.dtype={c.dtype!r} is not supported; use one of "
                         f"{list(TRAIN_DTYPES)}")
    if c.block_impl not in BLOCK_IMPLS:
        raise ValueError(f"config.block_impl={c.block_impl!r}; use one of {list(BLOCK_IMPLS)}")
    for key, value in c.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"config.{key} must be a finite number, got {value}")
    for key in ("batch_size", "eval_batch_size", "image_size", "log_every_steps",
                "checkpoint_every_steps", "keep_checkpoints"):
        if int(c[key]) < 1:
            raise ValueError(f"config.{key} must be >= 1, got {c[key]}")
    for key in ("batch_size", "eval_batch_size"):
        if c[key] % num_devices:
            raise ValueError(
                f"config.{key}={c[key]} does not divide by the {num_devices} devices of the "
                f"mesh; use a multiple of {num_devices}")
    if c.max_steps < 0 or c.num_epochs < 0 or (c.max_steps == 0 and c.num_epochs <= 0):
        raise ValueError("set config.num_epochs > 0 or config.max_steps > 0 "
                         f"(got num_epochs={c.num_epochs}, max_steps={c.max_steps})")
    if c.divergence_loss < 0:
        raise ValueError(f"config.divergence_loss must be >= 0 (0 = auto), got "
                         f"{c.divergence_loss}")
    if not 0.0 <= c.ema_decay < 1.0:
        raise ValueError(f"config.ema_decay must be in [0, 1) (0 = off), got {c.ema_decay}")
    if not 0.0 < c.crop_min_scale <= 1.0:
        raise ValueError(f"config.crop_min_scale must be in (0, 1], got {c.crop_min_scale}")
    if not 0.0 <= c.label_smoothing < 1.0:
        raise ValueError(f"config.label_smoothing must be in [0, 1), got {c.label_smoothing}")
    if c.learning_rate <= 0:
        raise ValueError(f"config.learning_rate must be > 0, got {c.learning_rate}")
    if c.eval_every_epochs < 1 and c.eval_every_steps < 1:
        raise ValueError("set config.eval_every_epochs >= 1 or config.eval_every_steps >= 1")
    flops_lib.TargetTracker(c.accuracy_targets)  # validates the targets


def prepare_workdir(workdir: pathlib.Path) -> None:
    """Create ``workdir`` and check that it is a writable folder (else one WorkdirError)."""
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir {str(workdir)!r} is a file, not a folder; pass the path of "
                           "a folder (it is created if missing)")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create --workdir {str(workdir)!r}: {e.strerror} "
                           f"[errno {e.errno}]; pass a folder you can write to") from None
    probe = workdir / f".write_test_{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(f"--workdir {str(workdir)!r} is not writable: {e.strerror} "
                           f"[errno {e.errno}]; fix its permissions or pass another "
                           "folder") from None


def _write_text(path: pathlib.Path, text: str) -> None:
    """Write a small file atomically (temp + rename); OSError -> one WriteFailedError."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        raise WriteFailedError(f"could not write {path}: {e.strerror} [errno {e.errno}]; free "
                               "disk space or fix the folder, then rerun the same command"
                               ) from None


def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def config_changes(workdir: pathlib.Path, config: ml_collections.ConfigDict,
                   class_names: Sequence[str]) -> dict[str, tuple[Any, Any]]:
    """Settings this run changes against the run stored in ``workdir`` (config.json and
    classes.json): {key: (stored, now)}. Keys in :data:`RESUME_FREE_KEYS` and keys the stored
    config lacks (added by a later version) are not compared."""
    stored = _read_json(workdir / "config.json")
    now = json.loads(config.to_json_best_effort())
    changed: dict[str, tuple[Any, Any]] = {}
    if isinstance(stored, dict):
        for key in sorted(now):
            if key in RESUME_FREE_KEYS or key not in stored:
                continue
            if stored[key] != now[key]:
                changed[key] = (stored[key], now[key])
    stored_classes = _read_json(workdir / "classes.json")
    if isinstance(stored_classes, list) and stored_classes != list(class_names):
        changed["classes (classes.json)"] = (f"{len(stored_classes)} classes",
                                             f"{len(class_names)} classes" if
                                             len(class_names) != len(stored_classes)
                                             else "other class names")
    return changed


class _StopRequest:
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

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _close_iterator(it: Any) -> None:
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


def _cost_flops(compiled: Any) -> float:
    """FLOPs of a compiled executable from XLA's cost analysis (0.0 when unavailable)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (some backends have no cost model)
        return 0.0
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def _complexity(model: str, image_size: int, num_classes: int) -> dict[str, Any]:
    """Analytic MACs / FLOPs / params of one image (convfirst_jax.complexity), or Nones."""
    try:
        from convfirst_jax.complexity import model_complexity
        table = model_complexity(model, resolution=image_size, batch_size=1,
                                 num_classes=num_classes)
        return {"macs_per_image": int(table.macs), "forward_flops_per_image": int(table.flops),
                "complexity_params": int(table.params)}
    except Exception as e:  # noqa: BLE001  (keep training without the analytic table)
        print(f"[train] warning: analytic complexity unavailable ({type(e).__name__}: {e})",
              flush=True)
        return {"macs_per_image": None, "forward_flops_per_image": None,
                "complexity_params": None}


def _param_count(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


class _Printer:
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


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """1-D data-parallel mesh with axis "data" (the axis the Pallas block kernel shards on)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), ("data",))


def jit_steps(defs: state_lib.ModelDefs, tx: Any, schedule: state_lib.Schedule, mesh: Mesh, *,
              label_smoothing: float, ema_decay: float = 0.0) -> tuple[Any, Any]:
    """Jitted (train_step, eval_step): state replicated, batch sharded on "data".

    train_step(state, batch) -> (state, metrics) donates the input state;
    eval_step(params, batch_stats, rest, batch) -> eval sums. Call them under
    ``jax.set_mesh(mesh)`` so that mesh-aware kernels see the ambient mesh.
    """
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    train_step = functools.partial(
        state_lib.train_step, graphdef=defs.train, tx=tx, schedule=schedule,
        label_smoothing=label_smoothing, ema_decay=ema_decay)
    eval_step = functools.partial(state_lib.eval_step, graphdef=defs.eval)
    jit_train = jax.jit(train_step, in_shardings=(replicated, batch_sharding),
                        out_shardings=(replicated, replicated), donate_argnums=0)
    jit_eval = jax.jit(eval_step, in_shardings=(replicated,) * 3 + (batch_sharding,),
                       out_shardings=replicated)
    return jit_train, jit_eval


# ----------------------------------------------------------------------------------------------
# Batches


def _to_global(batch: Mapping[str, Any], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This host's batch (numpy) -> global jax.Arrays sharded over the batch axis."""
    out = {}
    for k in BATCH_KEYS:
        if k not in batch:
            raise ValueError(f"data loader batches must have keys {BATCH_KEYS}; missing {k!r}")
        x = np.asarray(batch[k])
        out[k] = jax.make_array_from_process_local_data(sharding, x)
    return out


def _abstract_batch(batch_size: int, image_size: int, sharding: NamedSharding) -> dict:
    sds = functools.partial(jax.ShapeDtypeStruct, sharding=sharding)
    return {"image": sds((batch_size, image_size, image_size, 3), jnp.float32),
            "label": sds((batch_size,), jnp.int32),
            "valid": sds((batch_size,), jnp.float32)}


# ----------------------------------------------------------------------------------------------
# The run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       model_factory: Callable[..., Any] | None = None,
                       data_module: Any | None = None) -> dict[str, Any]:
    """Train ``config.model`` and write metrics, checkpoints and ``summary.json`` to ``workdir``.

    Rerunning with the same ``workdir`` resumes from its newest checkpoint (including the data
    iterator position), so an interrupted run ends with the same metrics as an uninterrupted
    one. Returns the summary dict.

    Args:
      config: a config from ``configs/*.py`` (see configs/default.py for the keys).
      workdir: run directory (metrics.jsonl, summary.json, classes.json, config.json,
        checkpoints/).
      model_factory: defaults to ``convfirst_jax.create_model``.
      data_module: defaults to ``train.data``.

    Raises:
      NonFiniteLossError: the loss or the updated state became NaN/Inf (no checkpoint with
        non-finite numbers is written; the last good one is kept).
      ValueError: a bad config value or dataset (nothing is written: the workdir is created
        only after the config and the data folder are checked).
      WorkdirError: the workdir is a file or not writable.
      WorkdirMismatchError: the workdir holds a run of another model, or of other settings
        and ``config.allow_config_change`` is False.
      WriteFailedError: a checkpoint or record could not be written (disk full).
      Interrupted: SIGINT / SIGTERM (a checkpoint of the current step was written).
    """
    t_session = time.perf_counter()
    if data_module is None:
        from train import data as data_module  # noqa: PLC0415
    if model_factory is None:
        from convfirst_jax import create_model as model_factory  # noqa: PLC0415

    workdir = pathlib.Path(workdir)
    devices = jax.devices()
    validate_config(config, len(devices))
    primary = jax.process_index() == 0
    say = _Printer(primary)
    if workdir.exists() and not workdir.is_dir():
        prepare_workdir(workdir)  # the one error for a file in its place, before any work

    # --- data (checked before the workdir is created) -----------------------------------------
    data_dir = config.data_dir or str(data_module.ensure_synthetic_dataset())
    try:
        class_names = list(data_module.class_names(data_dir))
        num_classes = config.num_classes or len(class_names)
        if num_classes < len(class_names):
            raise ValueError(f"config.num_classes={num_classes} is smaller than the "
                             f"{len(class_names)} class folders of {data_dir}/train; set it to 0")
        empty_ok = dict(allow_empty_classes=bool(config.allow_empty_classes))
        if hasattr(data_module, "scan_split"):
            for split in ("train", "val"):
                scan = data_module.scan_split(data_dir, split, **(empty_ok if split == "train"
                                                                   else {}))
                checked, bad = data_module.check_readable(scan)
                if split == "train":
                    names = ", ".join(scan.class_names[:8]) + (
                        f", ... ({len(scan.class_names)} in all)" if len(scan.class_names) > 8
                        else "")
                    say(f"classes ({len(scan.class_names)}): {names}"
                        + (f"; empty (allowed): {', '.join(scan.empty_classes)}"
                           if scan.empty_classes else ""))
                say(f"{split}: {scan.describe()}; unreadable in a start-up probe: {bad} of "
                    f"{checked}")
            steps_per_epoch = int(data_module.steps_per_epoch(data_dir, config.batch_size,
                                                              **empty_ok))
        else:  # a minimal data module (tests): no scan report
            steps_per_epoch = int(data_module.steps_per_epoch(data_dir, config.batch_size))
        total_steps = int(config.max_steps) if config.max_steps > 0 else int(
            round(config.num_epochs * steps_per_epoch))
        eval_every = (int(config.eval_every_steps) if config.eval_every_steps > 0
                      else int(config.eval_every_epochs) * steps_per_epoch)
        loader_kwargs = dict(image_size=config.image_size, global_batch_size=config.batch_size,
                             seed=config.seed, num_workers=config.num_workers,
                             shard_index=jax.process_index(), shard_count=jax.process_count(),
                             scale=(float(config.crop_min_scale), 1.0))
        if hasattr(data_module, "scan_split"):
            loader_kwargs.update(empty_ok)
        train_loader = data_module.build_train_loader(data_dir, **loader_kwargs)
        eval_loader = data_module.build_eval_loader(
            data_dir, image_size=config.image_size,
            batch_size=config.eval_batch_size // jax.process_count(),
            num_workers=config.num_workers, shard_index=jax.process_index(),
            shard_count=jax.process_count())
    except ValueError as e:  # data.py says "data_dir"; name this command's flag
        raise ValueError(f"{e} (data_dir is --config.data_dir=DIR)") from None
    if primary:
        prepare_workdir(workdir)

    # --- mesh, model, optimizer ---------------------------------------------------------------
    mesh = make_mesh(devices)
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))

    model = model_factory(config.model, num_classes=num_classes, block_impl=config.block_impl,
                          dtype=COMPUTE_DTYPES[config.dtype], param_dtype=jnp.float32,
                          drop_path=config.drop_path, seed=config.seed)
    peak_lr = config.learning_rate * config.batch_size / 256.0
    warmup_steps = min(int(round(config.warmup_epochs * steps_per_epoch)), total_steps)
    schedule = state_lib.lr_schedule(peak_lr, total_steps, warmup_steps)
    if total_steps > 1 and warmup_steps >= total_steps:  # stdout: stderr is for errors
        say(f"WARNING: warm-up ({config.warmup_epochs:g} epochs = {warmup_steps} steps) is as "
            f"long as the whole run ({total_steps} steps): the learning rate never decays; "
            "lower --config.warmup_epochs (e.g. 0.1 x num_epochs)")
    tx = state_lib.make_optimizer(schedule, weight_decay=config.weight_decay,
                                  grad_clip_norm=config.grad_clip_norm)
    defs, state = state_lib.create_train_state(model, tx, use_ema=config.ema_decay > 0)
    del model
    state = jax.device_put(state, replicated)
    n_params = _param_count(state.params)
    complexity = _complexity(config.model, config.image_size, num_classes)

    say(f"model {config.model}: {n_params / 1e6:.2f} M params"
        + (f", {complexity['macs_per_image'] / 1e9:.3f} GMACs/image at {config.image_size} px"
           if complexity["macs_per_image"] else "")
        + f"; {len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), "
        f"{jax.process_count()} process(es)")
    say(f"data {data_dir}: {len(class_names)} classes, {steps_per_epoch} steps/epoch of "
        f"{config.batch_size}; {total_steps} steps; peak lr {peak_lr:.3g} "
        f"({config.learning_rate:g} x {config.batch_size}/256), warmup {warmup_steps} steps")

    try:
        ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    except OSError as e:
        raise WorkdirError(f"cannot use {workdir / 'checkpoints'}: {e}; pass another "
                           "--workdir") from None
    writer = metrics_lib.MetricsWriter(workdir / "metrics.jsonl", enabled=primary)
    try:
        commit = _check_resume(config, workdir, ckpt, class_names, say, primary)
        with _StopRequest() as stop:
            return _loop(config, workdir, t_session, devices, primary, say, data_dir,
                         class_names, num_classes, steps_per_epoch, total_steps, eval_every,
                         train_loader, eval_loader, mesh, replicated, batch_sharding, peak_lr,
                         warmup_steps, schedule, tx, defs, state, n_params, complexity, ckpt,
                         writer, stop, commit)
    except BaseException:
        ckpt.close_quietly()
        raise


def _check_resume(config, workdir, ckpt, class_names, say, primary) -> Callable[[], None]:
    """Refuse to resume a run of another model or (unless allowed) other settings.

    Returns ``commit()``, to call once the checkpoint has been restored: it records allowed
    changes in config_changes.jsonl and writes config.json and classes.json of this run (a
    resumption that fails leaves the stored settings as they were)."""
    record = None
    latest = ckpt.latest_step()
    if latest is not None:
        changed = config_changes(workdir, config, class_names)
        if "model" in changed:
            raise WorkdirMismatchError(
                f"--workdir {str(workdir)!r} holds a {changed['model'][0]} run (checkpoint step "
                f"{latest}); this command asks for model {changed['model'][1]}: use a new "
                f"--workdir for another model, or delete {str(workdir)!r} to start over")
        if changed:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in
                               ((k, *v) for k, v in changed.items()))
            if not config.allow_config_change:
                raise WorkdirMismatchError(
                    f"--workdir {str(workdir)!r} holds a run (checkpoint step {latest}) started "
                    f"with other settings: {listed}. Rerun with the stored settings to resume, "
                    "pass --config.allow_config_change=True to resume with the new ones (the "
                    "change is recorded), or use a new --workdir")
            say(f"resuming with changed settings (allowed by allow_config_change): {listed}; "
                f"recorded in {workdir / CONFIG_CHANGES_FILE}")
            record = {"step": latest, "time": datetime.datetime.now(
                datetime.timezone.utc).isoformat(timespec="seconds"),
                "changed": {k: {"stored": a, "now": b} for k, (a, b) in changed.items()}}

    def commit() -> None:
        if not primary:
            return
        if record is not None:
            try:
                with open(workdir / CONFIG_CHANGES_FILE, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:
                raise WriteFailedError(f"could not write {workdir / CONFIG_CHANGES_FILE}: "
                                       f"{e.strerror} [errno {e.errno}]") from None
        _write_text(workdir / "classes.json", json.dumps(class_names, indent=1))
        _write_text(workdir / "config.json", config.to_json_best_effort(indent=2))

    return commit


def _loop(config, workdir, t_session, devices, primary, say, data_dir, class_names,
          num_classes, steps_per_epoch, total_steps, eval_every, train_loader, eval_loader,
          mesh, replicated, batch_sharding, peak_lr, warmup_steps, schedule, tx, defs, state,
          n_params, complexity, ckpt, writer, stop, commit) -> dict[str, Any]:
    """Resume, compile, step loop and summary of :func:`train_and_evaluate`."""

    with jax.set_mesh(mesh):
        jit_train, jit_eval = jit_steps(defs, tx, schedule, mesh,
                                        label_smoothing=config.label_smoothing,
                                        ema_decay=config.ema_decay)

        # --- resume -----------------------------------------------------------------------------
        meta: dict[str, Any] = {}
        train_iter = iter(train_loader)
        start_step = ckpt.latest_step()
        if start_step is not None:
            state, meta = ckpt.restore(start_step, state)
            if meta.get("data_iterator") is not None:
                try:
                    train_iter.set_state(
                        checkpoint_lib.decode_iterator_state(meta["data_iterator"]))
                except Exception as e:  # noqa: BLE001  (grain: another worker count, source)
                    raise WorkdirMismatchError(
                        f"the data-iterator position of checkpoint step {start_step} in "
                        f"{ckpt.directory} does not fit this data loader ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}); "
                        "resume with the stored num_workers, data_dir and batch_size, or use a "
                        "new --workdir") from None
            writer.truncate_after(start_step)
            say(f"resumed from checkpoint step {start_step} in {ckpt.directory}")
        else:
            writer.reset()  # records of an attempt killed before its first checkpoint
        commit()
        start_step = int(jax.device_get(state.step))

        counter = flops_lib.FlopsCounter.from_json(meta.get("flops", {}))
        tracker = flops_lib.TargetTracker.from_json(meta.get("targets", {}),
                                                    targets=config.accuracy_targets)
        history: list[dict[str, Any]] = list(meta.get("history", []))
        wall_before = float(meta.get("wall_time_s", 0.0))
        invalid_total = int(meta.get("invalid_train_images", 0))
        invalid_epoch = int(meta.get("invalid_epoch", 0))
        eval_latency = meta.get("eval_latency_ms_per_batch")
        speed = dict(meta.get("speed", {}))
        last_train_record: dict[str, Any] = dict(meta.get("last_train") or {})
        loop_time = float(meta.get("loop_time_s", 0.0))
        loop_images = int(meta.get("loop_images", 0))

        def wall_time() -> float:
            return wall_before + time.perf_counter() - t_session

        # --- compile; FLOPs of one step ---------------------------------------------------------
        t0 = time.perf_counter()
        compiled = jit_train.lower(
            state, _abstract_batch(config.batch_size, config.image_size, batch_sharding)
        ).compile()
        step_flops = _cost_flops(compiled) * len(devices)  # per-device program x devices
        counter.step_flops = step_flops
        counter.forward_flops_per_image = complexity["forward_flops_per_image"] or 0.0
        say(f"compiled train step in {time.perf_counter() - t0:.1f} s; XLA cost analysis: "
            f"{step_flops / 1e9:.2f} GFLOPs/step"
            + (f" ({step_flops / config.batch_size / counter.forward_flops_per_image:.2f} x "
               "analytic forward FLOPs per image)" if counter.forward_flops_per_image else ""))

        # --- start-up speed check ---------------------------------------------------------------
        if config.speed_check_batches > 0 and start_step == 0:
            speed = _speed_check(config, train_loader, compiled, state, batch_sharding,
                                 replicated, say)

        # --- loop -------------------------------------------------------------------------------
        pending: list[tuple[int, dict[str, jax.Array]]] = []
        divergence_loss = float(config.divergence_loss) or max(
            20.0, 10.0 * math.log(max(num_classes, 2)))
        interval_t, interval_steps = time.perf_counter(), 0

        def flush(step: int) -> dict[str, Any] | None:
            """Fetch pending step metrics; stop on divergence (NaN/Inf or too large a loss, a
            non-finite updated state) or a failed background write; return the interval mean."""
            nonlocal pending, invalid_total, invalid_epoch
            if not pending:
                return None
            fetched = jax.device_get([m for _, m in pending])
            steps = [s for s, _ in pending]
            pending = []
            for s, m in zip(steps, fetched):
                loss = float(m["loss"])
                # The loss of step s is that of the weights after update s - 1; the state
                # flag is that of update s. first_bad: the first step whose state is bad.
                if not math.isfinite(loss):
                    what, first_bad = "loss", s - 1
                elif loss > divergence_loss:
                    what, first_bad = "large loss", s - 1
                elif not float(m.get("state_finite", 1.0)):
                    what, first_bad = "weights, BatchNorm statistics or optimizer state", s
                else:
                    continue
                if primary:  # one process moves the files (the folder may be shared)
                    moved = ckpt.quarantine(first_bad, workdir / "diverged_checkpoints")
                else:
                    ckpt.wait()
                    moved = []
                raise NonFiniteLossError(s, loss, ckpt.latest_step(), str(workdir), what=what,
                                         moved=tuple(moved), threshold=divergence_loss)
            ckpt.check()  # a failed background checkpoint write stops the run here
            valid = sum(float(m["valid"]) for m in fetched)
            invalid = len(fetched) * config.batch_size - int(round(valid))
            invalid_total += invalid
            invalid_epoch += invalid
            mean = {k: float(np.mean([float(m[k]) for m in fetched]))
                    for k in ("loss", "top1", "grad_norm")}
            mean["lr"] = float(fetched[-1]["lr"])
            return mean

        def save(step: int, eval_metrics: Mapping[str, float] | None = None) -> None:
            meta_out = {
                "step": step,
                "data_iterator": checkpoint_lib.encode_iterator_state(train_iter.get_state()),
                "flops": counter.to_json(), "targets": tracker.to_json(), "history": history,
                "wall_time_s": wall_time(), "invalid_train_images": invalid_total,
                "invalid_epoch": invalid_epoch, "eval_latency_ms_per_batch": eval_latency,
                "speed": speed, "last_train": last_train_record, "loop_time_s": loop_time,
                "loop_images": loop_images,
            }
            metrics = {"top1": float(eval_metrics["top1"])} if eval_metrics else None
            ckpt.save(step, state, meta_out, metrics=metrics)

        progress = _progress(config, total_steps, start_step, primary)
        say.bar = progress
        step = start_step
        try:
            while step < total_steps:
                if stop.signum is not None:
                    _stop_now(stop.signum, step, start_step, flush, save, ckpt, writer, say)
                batch = _to_global(next(train_iter), batch_sharding)
                state, m = compiled(state, batch)
                step += 1
                interval_steps += 1
                counter.add_steps(1, config.batch_size)
                pending.append((step, m))
                # The bar counts *completed* steps: wait for the previous step (one stays in
                # flight, so dispatch still overlaps the host), not the dispatched ones.
                if len(pending) >= 2:
                    jax.block_until_ready(pending[-2][1]["loss"])
                    progress.update(1)

                is_eval = step % eval_every == 0 or step == total_steps
                is_ckpt = step % config.checkpoint_every_steps == 0 or is_eval
                is_epoch_end = step % steps_per_epoch == 0
                if step % config.log_every_steps == 0 or is_eval or is_ckpt or is_epoch_end:
                    mean = flush(step)
                    jax.block_until_ready(state.step)
                    progress.update(step - progress.n)  # every dispatched step is done here
                    dt = time.perf_counter() - interval_t
                    ips = interval_steps * config.batch_size / max(dt, 1e-9)
                    loop_time += dt
                    loop_images += interval_steps * config.batch_size
                    if mean is not None and (step % config.log_every_steps == 0 or is_eval):
                        last_train_record = {
                            "step": step, "epoch": step / steps_per_epoch, "split": "train",
                            **mean, "images_per_s": ips, "wall_time_s": wall_time(),
                            "train_flops": counter.train_flops,
                            "train_flops_analytic": counter.analytic_flops}
                        writer.write(last_train_record)
                        progress.set_postfix(loss=f"{mean['loss']:.3f}", img_s=f"{ips:.0f}",
                                             refresh=False)
                        if not config.progress_bar:
                            say(f"step {step}/{total_steps}: loss {mean['loss']:.4f} "
                                f"train top-1 {mean['top1']:.3f} lr {mean['lr']:.3g} "
                                f"{ips:.0f} images/s")
                    if is_epoch_end:
                        epoch = step // steps_per_epoch
                        if invalid_epoch >= steps_per_epoch * config.batch_size:
                            raise ValueError(
                                f"every one of the {invalid_epoch} training images read in "
                                f"epoch {epoch} of {data_dir}/train was unreadable; replace "
                                "them with JPEG / PNG / WebP images or point "
                                "--config.data_dir=DIR at another folder")
                        writer.write({"step": step, "epoch": float(epoch), "split": "epoch",
                                      "invalid_train_images": invalid_epoch,
                                      "wall_time_s": wall_time()})
                        if invalid_epoch:
                            say(f"epoch {epoch}: {invalid_epoch} unreadable training images "
                                "were skipped (masked out of loss and metrics)")
                        invalid_epoch = 0
                    eval_metrics = None
                    if is_eval:
                        eval_metrics, latency = _evaluate(jit_eval, state, eval_loader,
                                                          batch_sharding, config,
                                                          measure_latency=eval_latency is None)
                        if latency is not None:
                            eval_latency = latency
                        if not eval_metrics.get("count"):
                            raise ValueError(
                                f"none of the {getattr(eval_loader, 'num_examples', '?')} "
                                f"images of {data_dir}/val could be read, so there is no "
                                "eval accuracy; replace them with JPEG / PNG / WebP images or "
                                "point --config.data_dir=DIR at another folder")
                        record = {"step": step, "epoch": step / steps_per_epoch,
                                  "split": "eval", **eval_metrics, "wall_time_s": wall_time(),
                                  "train_flops": counter.train_flops,
                                  "train_flops_analytic": counter.analytic_flops}
                        history.append(record)
                        writer.write(record)
                        for rec in tracker.update(step=step, epoch=step / steps_per_epoch,
                                                  wall_time_s=wall_time(),
                                                  train_flops=counter.train_flops,
                                                  top1=eval_metrics["top1"]):
                            say(f"reached top-1 {rec.target:.0%} at step {rec.step} "
                                f"({rec.train_flops:.3g} training FLOPs, "
                                f"{rec.wall_time_s:.0f} s)")
                        say(f"eval step {step} (epoch {step / steps_per_epoch:.2f}): "
                            f"top-1 {eval_metrics['top1']:.4f} top-5 {eval_metrics['top5']:.4f} "
                            f"loss {eval_metrics['loss']:.4f}")
                    if is_ckpt:
                        save(step, eval_metrics)
                    interval_t, interval_steps = time.perf_counter(), 0
        finally:
            progress.close()
            say.bar = None
            batch = None  # noqa: F841  (on CPU its arrays may alias the loader's shared memory)
            _close_iterator(train_iter)
        ckpt.wait()

    summary = _summary(config, data_dir, class_names, num_classes, devices, n_params,
                       complexity, counter, tracker, history, last_train_record, speed,
                       eval_latency, wall_time(), invalid_total, total_steps, steps_per_epoch,
                       loop_images / loop_time if loop_time > 0 else None, peak_lr)
    if primary:
        _write_text(workdir / "summary.json",
                    json.dumps(summary, indent=2, default=metrics_lib._jsonable))
        top1 = summary["final"]["top1"]
        say(f"done: {step} steps, top-1 {'-' if top1 is None else format(top1, '.4f')}, "
            f"{counter.xla_flops:.3g} training FLOPs (XLA) / {counter.analytic_flops:.3g} "
            f"(3 x forward); summary in {workdir / 'summary.json'}")
    ckpt.close()
    return summary


# ----------------------------------------------------------------------------------------------
# Pieces of the loop


def _stop_now(signum, step, start_step, flush, save, ckpt, writer, say) -> None:
    """Checkpoint the current step (after the finiteness check) and raise Interrupted."""
    name = signal.Signals(signum).name
    say(f"{name} received: stopping at step {step} and writing a checkpoint (send it again to "
        "stop at once, without one)")
    flush(step)  # a diverged state is never saved: NonFiniteLossError instead
    if step > start_step:
        save(step)
        ckpt.wait()
        where = f"checkpoint step {step} written in {ckpt.directory}"
    else:
        latest = ckpt.latest_step()
        where = ("no step was done in this session; " + (
            f"the last checkpoint is step {latest} in {ckpt.directory}" if latest is not None
            else "no checkpoint exists yet"))
    raise Interrupted(signum, f"stopped by {name} at step {step}; {where}; rerun the same "
                              "command to resume")


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


def _progress(config: ml_collections.ConfigDict, total: int, initial: int, primary: bool):
    if not (config.progress_bar and primary):
        return _NoProgress()
    from tqdm import tqdm  # noqa: PLC0415  (training-only dependency)
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=2.0,
                smoothing=0.1, file=sys.stderr)


def _speed_check(config, loader, compiled, state, batch_sharding, replicated, say
                 ) -> dict[str, float]:
    """Loader images/s (separate iterator) and train-step images/s (throw-away state copy)."""
    it = iter(loader)
    batches = [next(it)]  # first batch includes worker start-up; not timed
    t0 = time.perf_counter()
    for _ in range(config.speed_check_batches):
        batches.append(next(it))
    loader_ips = config.speed_check_batches * config.batch_size / (time.perf_counter() - t0)
    del it
    out = {"loader_images_per_s": loader_ips}
    if config.speed_check_steps > 0:
        scratch = jax.device_put(jax.tree.map(jnp.copy, state), replicated)
        batch = _to_global(batches[-1], batch_sharding)
        scratch, m = compiled(scratch, batch)  # warm-up
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in range(config.speed_check_steps):
            scratch, m = compiled(scratch, batch)
        jax.block_until_ready(m)
        step_ips = config.speed_check_steps * config.batch_size / (time.perf_counter() - t0)
        del scratch
        out["step_images_per_s"] = step_ips
        ratio = loader_ips / step_ips
        say(f"speed: loader {loader_ips:.0f} images/s, train step {step_ips:.0f} images/s "
            f"(loader/step = {ratio:.1f}x"
            + (")" if ratio >= 2 else "; WARNING: the input pipeline may starve the step, "
               "raise num_workers)"))
    else:
        say(f"speed: loader {loader_ips:.0f} images/s")
    return out


def _evaluate(jit_eval, state, eval_loader, batch_sharding, config, measure_latency: bool
              ) -> tuple[dict[str, float], float | None]:
    """Top-1 / top-5 / loss over the whole eval split (EMA weights when the EMA is on)."""
    variables = state_lib.eval_variables(state)
    acc = metrics_lib.EvalAccumulator()
    batch = None
    bar = None
    if config.progress_bar and jax.process_index() == 0:
        from tqdm import tqdm  # noqa: PLC0415  (training-only dependency)
        n = getattr(eval_loader, "num_examples_local",
                    getattr(eval_loader, "num_examples", None))
        bar = tqdm(total=n, unit="img", desc="eval", leave=False, dynamic_ncols=True,
                   mininterval=2.0, file=sys.stderr)
    try:
        for host_batch in eval_loader:  # each host iterates its own shard of the val split
            batch = _to_global(host_batch, batch_sharding)
            sums = jit_eval(*variables, batch)
            acc.add(sums)
            if bar is not None:
                bar.update(int(np.sum(host_batch["valid"])) if "valid" in host_batch
                           else len(host_batch["label"]))
    finally:
        if bar is not None:
            bar.close()
    latency = None
    if measure_latency and batch is not None:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(jit_eval(*variables, batch))
            times.append(time.perf_counter() - t0)
        latency = 1e3 * float(np.median(times))
    result = acc.result()
    expected = getattr(eval_loader, "num_examples", None)
    if expected is not None:
        result["unreadable"] = int(expected) - int(result["count"])
    return result, latency


def _summary(config, data_dir, class_names, num_classes, devices, n_params, complexity, counter,
             tracker, history, last_train, speed, eval_latency, wall, invalid_total,
             total_steps, steps_per_epoch, train_ips, peak_lr) -> dict[str, Any]:
    evals = [h for h in history if h.get("split") == "eval"]
    final = evals[-1] if evals else {}
    return {
        "model": config.model,
        "status": "completed",
        "data_dir": data_dir,
        "num_classes": num_classes,
        "num_class_folders": len(class_names),
        "image_size": config.image_size,
        "batch_size": config.batch_size,
        "eval_batch_size": config.eval_batch_size,
        "dtype": config.dtype,
        "block_impl": config.block_impl,
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dataset": pathlib.Path(config.data_dir).name if config.data_dir else "synthetic",
        "params": n_params,
        **complexity,
        "steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "epochs": total_steps / steps_per_epoch,
        "peak_learning_rate": peak_lr,
        "wall_time_s": wall,
        "train_step_flops_xla": counter.step_flops,
        "train_flops_xla": counter.xla_flops,
        "train_flops_analytic": counter.analytic_flops,
        "train_flops_ratio_xla_over_analytic": counter.ratio,
        "train_images_per_s": train_ips,
        "loader_images_per_s": speed.get("loader_images_per_s"),
        "step_images_per_s": speed.get("step_images_per_s"),
        "eval_latency_ms_per_batch": eval_latency,
        "invalid_train_images": invalid_total,
        "final": {"top1": final.get("top1"), "top5": final.get("top5"),
                  "loss": final.get("loss"), "train_loss": last_train.get("loss")},
        "best_top1": max((h["top1"] for h in evals), default=None),
        "history": [{k: h.get(k) for k in ("step", "epoch", "top1", "top5", "loss",
                                            "wall_time_s", "train_flops")} for h in evals],
        "targets": tracker.to_json(),
        "config": json.loads(config.to_json_best_effort()),
    }
