"""The training loop: data-parallel AdamW training with eval, checkpoints and FLOPs-to-target.

Shape of a run (after flax examples/imagenet, rewritten for NNX and a ``jax.set_mesh`` mesh):

1. build the data loaders (``train.data``) and the model (``convfirst_jax.create_model``);
2. replicate the train state over a 1-D device mesh ``("data",)`` and shard every batch on it;
3. compile the train step ahead of time and read its FLOPs from XLA's cost analysis;
4. resume from the newest checkpoint in ``workdir/checkpoints`` if there is one (model,
   optimizer, EMA, data-iterator position and the :class:`~train.progress.RunProgress`
   counters), else start fresh;
5. loop: train step; log, evaluate, checkpoint and close epochs when
   :meth:`~train.progress.Cadence.due`;
6. write ``workdir/summary.json`` (:mod:`train.run_summary`): the accuracy-complexity record of
   the run (Hernandez & Brown 2020: training FLOPs until each top-1 target is first reached).

Faults (exit codes in train/errors.py): a non-finite loss *or* a non-finite updated state
(params, BN statistics, optimizer moments, EMA) stops the run with :class:`NonFiniteLossError`
before anything is saved, so every checkpoint on disk is finite and the error names the last
one. A failed write (disk full) stops at once with :class:`~train.errors.WriteFailedError`,
keeping the last complete checkpoint. SIGINT / SIGTERM stop after the current step with a
checkpoint of it (:class:`~train.errors.Interrupted`). Resuming a workdir of another model, or
with changed settings unless ``allow_config_change``, is refused
(:class:`~train.errors.WorkdirMismatchError`, :mod:`train.run_config`); an unusable workdir is
a :class:`~train.errors.WorkdirError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from convfirst_jax import host_memory
from convfirst_jax.dtypes import COMPUTE_DTYPES
from train import checkpoint as checkpoint_lib
from train import data as data_lib
from train import metrics as metrics_lib
from train import run_summary
from train import state as state_lib
from train import steps as steps_lib
from train.errors import (
    Interrupted,
    NonFiniteLossError,
    WorkdirError,
    WorkdirMismatchError,
    failure_reason,
)
from train.progress import Cadence, RunProgress
from train.run_config import check_resume, validate_config
from train.runtime import (
    Printer,
    StopRequest,
    close_iterator,
    prepare_workdir,
    progress_bar,
    write_text,
)


@dataclasses.dataclass(frozen=True)
class TrainData:
    """The checked dataset of a run and its two loaders."""

    data_dir: str
    class_names: list[str]
    num_classes: int
    steps_per_epoch: int
    train_loader: Any
    eval_loader: Any


def open_data(config: ml_collections.ConfigDict, say: Callable[[str], None]) -> TrainData:
    """Scan, probe and open ``config.data_dir`` (the synthetic set when empty); every problem is
    one ValueError naming ``--config.data_dir``."""
    data_dir = config.data_dir or str(data_lib.ensure_synthetic_dataset())
    empty_ok = dict(allow_empty_classes=bool(config.allow_empty_classes))
    try:
        class_names = list(data_lib.class_names(data_dir))
        num_classes = config.num_classes or len(class_names)
        if num_classes < len(class_names):
            raise ValueError(f"config.num_classes={num_classes} is smaller than the "
                             f"{len(class_names)} class folders of {data_dir}/train; set it to 0")
        scans = {}  # one walk per split: the report, the probe, the steps and the loaders
        for split in ("train", "val"):
            scan = scans[split] = data_lib.scan_split(
                data_dir, split, **(empty_ok if split == "train" else {}))
            checked, bad = data_lib.check_readable(scan)
            if split == "train":
                names = ", ".join(scan.class_names[:8]) + (
                    f", ... ({len(scan.class_names)} in all)" if len(scan.class_names) > 8 else "")
                say(f"classes ({len(scan.class_names)}): {names}"
                    + (f"; empty (allowed): {', '.join(scan.empty_classes)}"
                       if scan.empty_classes else ""))
            say(f"{split}: {scan.describe()}; unreadable in a start-up probe: {bad} of {checked}")
        steps_per_epoch = data_lib.steps_per_epoch(data_dir, config.batch_size,
                                                   scan=scans["train"])
        shard = dict(shard_index=jax.process_index(), shard_count=jax.process_count())
        train_loader = data_lib.build_train_loader(
            data_dir, image_size=config.image_size, global_batch_size=config.batch_size,
            seed=config.seed, num_workers=config.num_workers,
            scale=(float(config.crop_min_scale), 1.0), scan=scans["train"], **shard, **empty_ok)
        eval_loader = data_lib.build_eval_loader(
            data_dir, image_size=config.image_size,
            batch_size=config.eval_batch_size // jax.process_count(),
            num_workers=config.num_workers, scan=scans["val"], **shard)
    except ValueError as e:  # data.py says "data_dir"; name this command's flag
        raise ValueError(f"{e} (data_dir is --config.data_dir=DIR)") from None
    return TrainData(data_dir, class_names, num_classes, steps_per_epoch, train_loader,
                     eval_loader)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       model_factory: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Train ``config.model`` and write metrics, checkpoints and ``summary.json`` to ``workdir``.

    Rerunning with the same ``workdir`` resumes from its newest checkpoint (including the data
    iterator position), so an interrupted run ends with the same metrics as an uninterrupted
    one. Returns the summary dict.

    Args:
      config: a config from ``configs/*.py`` (see configs/default.py for the keys).
      workdir: run directory (metrics.jsonl, summary.json, classes.json, config.json,
        checkpoints/).
      model_factory: defaults to ``convfirst_jax.create_model``.

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
    session_start = time.perf_counter()
    if model_factory is None:
        from convfirst_jax import create_model as model_factory  # noqa: PLC0415
    workdir = pathlib.Path(workdir)
    devices = jax.devices()
    validate_config(config, len(devices))
    primary = jax.process_index() == 0
    say = Printer(primary)
    if workdir.exists() and not workdir.is_dir():
        prepare_workdir(workdir)  # the one error for a file in its place, before any work
    data = open_data(config, say)  # checked before the workdir is created
    if primary:
        prepare_workdir(workdir)
    cadence = Cadence.from_config(config, data.steps_per_epoch)

    # Model and optimizer: AdamW at learning_rate x batch / 256, warm-up then cosine decay.
    model = model_factory(config.model, num_classes=data.num_classes,
                          block_impl=config.block_impl, dtype=COMPUTE_DTYPES[config.dtype],
                          param_dtype=jnp.float32, drop_path=config.drop_path, seed=config.seed)
    peak_lr = config.learning_rate * config.batch_size / 256.0
    total = cadence.total_steps
    warmup_steps = min(int(round(config.warmup_epochs * cadence.steps_per_epoch)), total)
    schedule = state_lib.lr_schedule(peak_lr, total, warmup_steps)
    if total > 1 and warmup_steps >= total:  # stdout: stderr is for errors
        say(f"WARNING: warm-up ({config.warmup_epochs:g} epochs = {warmup_steps} steps) is as "
            f"long as the whole run ({total} steps): the learning rate never decays; "
            "lower --config.warmup_epochs (e.g. 0.1 x num_epochs)")
    tx = state_lib.make_optimizer(schedule, weight_decay=config.weight_decay,
                                  grad_clip_norm=config.grad_clip_norm)
    defs, state = state_lib.create_train_state(model, tx, use_ema=config.ema_decay > 0)
    del model
    mesh = steps_lib.make_mesh(devices)
    state = jax.device_put(state, NamedSharding(mesh, P()))
    facts = run_summary.RunFacts(
        data_dir=data.data_dir, class_names=data.class_names, num_classes=data.num_classes,
        devices=devices, params=int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
        complexity=run_summary.analytic_complexity(config.model, config.image_size,
                                                   data.num_classes),
        cadence=cadence, peak_lr=peak_lr)
    macs = facts.complexity["macs_per_image"]
    say(f"model {config.model}: {facts.params / 1e6:.2f} M params"
        + (f", {macs / 1e9:.3f} GMACs/image at {config.image_size} px" if macs else "")
        + f"; {len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), "
        f"{jax.process_count()} process(es); host memory {host_memory.status()}")
    say(f"data {data.data_dir}: {len(data.class_names)} classes, {cadence.steps_per_epoch} "
        f"steps/epoch of {config.batch_size}; {total} steps; peak lr {peak_lr:.3g} "
        f"({config.learning_rate:g} x {config.batch_size}/256), warmup {warmup_steps} steps")

    try:
        ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    except OSError as e:
        raise WorkdirError(f"cannot use {workdir / 'checkpoints'}: "
                           f"{failure_reason(e)}; pass another --workdir") from None
    writer = metrics_lib.MetricsWriter(workdir / "metrics.jsonl", enabled=primary)
    try:
        commit = check_resume(config, workdir, ckpt.latest_step(), data.class_names, say,
                              primary)
        with StopRequest() as stop, jax.set_mesh(mesh):
            jit_train, jit_eval = steps_lib.jit_steps(
                defs, tx, schedule, mesh, label_smoothing=config.label_smoothing,
                ema_decay=config.ema_decay)
            run = _Run(config, workdir, primary, say, data, cadence, facts, mesh, ckpt, writer,
                       stop, jit_eval)
            summary = run.train(state, jit_train, commit, session_start)
        ckpt.close()
    except BaseException:
        ckpt.close_quietly()
        raise
    return summary


@dataclasses.dataclass
class _Run:
    """One session of a run: what stays fixed while it trains, and the pieces of its loop."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    primary: bool
    say: Printer
    data: TrainData
    cadence: Cadence
    facts: run_summary.RunFacts
    mesh: jax.sharding.Mesh
    ckpt: checkpoint_lib.Checkpointer
    writer: metrics_lib.MetricsWriter
    stop: StopRequest
    jit_eval: Any

    def __post_init__(self):
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.divergence_loss = float(self.config.divergence_loss) or max(
            20.0, 10.0 * math.log(max(self.data.num_classes, 2)))
        self.pending: list[tuple[int, dict[str, jax.Array]]] = []  # steps not yet checked

    def train(self, state: state_lib.TrainState, jit_train: Any, commit: Callable[[], None],
              session_start: float) -> dict[str, Any]:
        """Resume, compile, the step loop and summary.json; returns the summary."""
        config, cadence, say = self.config, self.cadence, self.say
        train_iter = iter(self.data.train_loader)
        state, progress = self._resume(state, train_iter, session_start)
        commit()
        start_step = int(jax.device_get(state.step))
        compiled = self._compile(jit_train, state, progress)
        if config.speed_check_batches > 0 and start_step == 0:
            progress.speed = steps_lib.speed_check(config, self.data.train_loader, compiled,
                                                   state, self.batch_sharding, self.replicated,
                                                   say)
        progress.start_interval()
        bar = say.bar = progress_bar(config.progress_bar and self.primary, cadence.total_steps,
                                     start_step)
        step, batch = start_step, None
        try:
            while step < cadence.total_steps:
                if self.stop.signum is not None:
                    self._stop_now(step, start_step, state, train_iter, progress)
                batch = steps_lib.to_global(next(train_iter), self.batch_sharding)
                state, step_metrics = compiled(state, batch)
                step += 1
                progress.count_step(config.batch_size)
                self.pending.append((step, step_metrics))
                # The bar counts *completed* steps: wait for the previous step (one stays in
                # flight, so dispatch still overlaps the host), not the dispatched ones.
                if len(self.pending) >= 2:
                    jax.block_until_ready(self.pending[-2][1]["loss"])
                    bar.update(1)
                due = cadence.due(step)
                if not due:
                    continue
                mean = self._check_pending(progress)
                jax.block_until_ready(state.step)
                bar.update(step - bar.n)  # every dispatched step is done here
                images_per_s = progress.end_interval(config.batch_size)
                if mean is not None and due.log:
                    self._log_train(step, mean, images_per_s, progress, bar)
                if due.epoch_end:
                    self._end_epoch(step, progress)
                eval_metrics = self._evaluate(step, state, progress) if due.eval else None
                if due.checkpoint:
                    self._save(step, state, train_iter, progress, eval_metrics)
                progress.start_interval()
        finally:
            bar.close()
            say.bar = None
            batch = None  # noqa: F841  (on CPU its arrays may alias the loader's shared memory)
            close_iterator(train_iter)
        self.ckpt.wait()
        return self._finish(step, progress)

    # --- the pieces, in the order the loop meets them ------------------------------------------

    def _resume(self, state: state_lib.TrainState, train_iter: Any, session_start: float
                ) -> tuple[state_lib.TrainState, RunProgress]:
        """The newest checkpoint's state, data position and progress; else a fresh start."""
        meta: dict[str, Any] = {}
        start = self.ckpt.latest_step()
        if start is not None:
            state, meta = self.ckpt.restore(start, state)
            if meta.get("data_iterator") is not None:
                try:
                    train_iter.set_state(
                        checkpoint_lib.decode_iterator_state(meta["data_iterator"]))
                except Exception as e:  # noqa: BLE001  (grain: another worker count, source)
                    raise WorkdirMismatchError(
                        f"the data-iterator position of checkpoint step {start} in "
                        f"{self.ckpt.directory} does not fit this data loader "
                        f"({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}); "
                        "resume with the stored num_workers, data_dir and batch_size, or use a "
                        "new --workdir") from None
            self.writer.truncate_after(start)
            self.say(f"resumed from checkpoint step {start} in {self.ckpt.directory}")
        else:
            self.writer.reset()  # records of an attempt killed before its first checkpoint
        progress = RunProgress.from_meta(meta, targets=self.config.accuracy_targets,
                                         session_start=session_start)
        return state, progress

    def _compile(self, jit_train: Any, state: state_lib.TrainState, progress: RunProgress
                 ) -> Any:
        """Compile the train step ahead of time; its FLOPs (XLA cost analysis) go to the
        run's FLOPs counter."""
        config, counter = self.config, progress.flops
        t0 = time.perf_counter()
        compiled = jit_train.lower(state, steps_lib.abstract_batch(
            config.batch_size, config.image_size, self.batch_sharding)).compile()
        step_flops = steps_lib.cost_flops(compiled) * len(self.facts.devices)  # per device x n
        counter.step_flops = step_flops
        counter.forward_flops_per_image = self.facts.complexity["forward_flops_per_image"] or 0.0
        self.say(f"compiled train step in {time.perf_counter() - t0:.1f} s; XLA cost analysis: "
                 f"{step_flops / 1e9:.2f} GFLOPs/step"
                 + (f" ({step_flops / config.batch_size / counter.forward_flops_per_image:.2f} x "
                    "analytic forward FLOPs per image)" if counter.forward_flops_per_image
                    else ""))
        return compiled

    def _check_pending(self, progress: RunProgress) -> dict[str, float] | None:
        """Fetch the pending step metrics; stop on divergence (NaN/Inf or too large a loss, a
        non-finite updated state) or a failed background write; return the interval mean."""
        if not self.pending:
            return None
        fetched = jax.device_get([m for _, m in self.pending])
        steps = [s for s, _ in self.pending]
        self.pending = []
        for s, m in zip(steps, fetched):
            loss = float(m["loss"])
            # The loss of step s is that of the weights after update s - 1; the state flag is
            # that of update s. first_bad: the first step whose state is bad.
            if not math.isfinite(loss):
                what, first_bad = "loss", s - 1
            elif loss > self.divergence_loss:
                what, first_bad = "large loss", s - 1
            elif not float(m.get("state_finite", 1.0)):
                what, first_bad = "weights, BatchNorm statistics or optimizer state", s
            else:
                continue
            if self.primary:  # one process moves the files (the folder may be shared)
                moved = self.ckpt.quarantine(first_bad, self.workdir / "diverged_checkpoints")
            else:
                self.ckpt.wait()
                moved = []
            raise NonFiniteLossError(s, loss, self.ckpt.latest_step(), str(self.workdir),
                                     what=what, moved=tuple(moved),
                                     threshold=self.divergence_loss)
        self.ckpt.check()  # a failed background checkpoint write stops the run here
        valid = sum(float(m["valid"]) for m in fetched)
        progress.count_invalid(len(fetched) * self.config.batch_size - int(round(valid)))
        mean = {k: float(np.mean([float(m[k]) for m in fetched]))
                for k in ("loss", "top1", "grad_norm")}
        mean["lr"] = float(fetched[-1]["lr"])
        return mean

    def _log_train(self, step: int, mean: Mapping[str, float], images_per_s: float,
                   progress: RunProgress, bar: Any) -> None:
        counter = progress.flops
        progress.last_train = {
            "step": step, "epoch": self.cadence.epoch(step), "split": "train", **mean,
            "images_per_s": images_per_s, "wall_time_s": progress.wall_time(),
            "train_flops": counter.train_flops, "train_flops_analytic": counter.analytic_flops}
        self.writer.write(progress.last_train)
        bar.set_postfix(loss=f"{mean['loss']:.3f}", img_s=f"{images_per_s:.0f}", refresh=False)
        if not self.config.progress_bar:
            self.say(f"step {step}/{self.cadence.total_steps}: loss {mean['loss']:.4f} "
                     f"train top-1 {mean['top1']:.3f} lr {mean['lr']:.3g} "
                     f"{images_per_s:.0f} images/s")

    def _end_epoch(self, step: int, progress: RunProgress) -> None:
        """The epoch record; an epoch in which every image was unreadable stops the run."""
        epoch, invalid = step // self.cadence.steps_per_epoch, progress.invalid_epoch
        if invalid >= self.cadence.steps_per_epoch * self.config.batch_size:
            raise ValueError(
                f"every one of the {invalid} training images read in epoch {epoch} of "
                f"{self.data.data_dir}/train was unreadable; replace them with JPEG / PNG / "
                "WebP images or point --config.data_dir=DIR at another folder")
        self.writer.write({"step": step, "epoch": float(epoch), "split": "epoch",
                           "invalid_train_images": invalid,
                           "wall_time_s": progress.wall_time()})
        if invalid:
            self.say(f"epoch {epoch}: {invalid} unreadable training images were skipped "
                     "(masked out of loss and metrics)")
        progress.invalid_epoch = 0

    def _evaluate(self, step: int, state: state_lib.TrainState, progress: RunProgress
                  ) -> dict[str, float]:
        """Eval pass, its record, and the top-1 targets it reaches."""
        eval_loader = self.data.eval_loader
        metrics, latency = steps_lib.evaluate(
            self.jit_eval, state, eval_loader, self.batch_sharding,
            progress_bar=self.config.progress_bar,
            measure_latency=progress.eval_latency_ms_per_batch is None)
        if latency is not None:
            progress.eval_latency_ms_per_batch = latency
        if not metrics.get("count"):
            raise ValueError(
                f"none of the {getattr(eval_loader, 'num_examples', '?')} images of "
                f"{self.data.data_dir}/val could be read, so there is no eval accuracy; "
                "replace them with JPEG / PNG / WebP images or point --config.data_dir=DIR at "
                "another folder")
        epoch, counter = self.cadence.epoch(step), progress.flops
        record = {"step": step, "epoch": epoch, "split": "eval", **metrics,
                  "wall_time_s": progress.wall_time(), "train_flops": counter.train_flops,
                  "train_flops_analytic": counter.analytic_flops}
        progress.history.append(record)
        self.writer.write(record)
        for rec in progress.targets.update(step=step, epoch=epoch,
                                           wall_time_s=progress.wall_time(),
                                           train_flops=counter.train_flops,
                                           top1=metrics["top1"]):
            self.say(f"reached top-1 {rec.target:.0%} at step {rec.step} "
                     f"({rec.train_flops:.3g} training FLOPs, {rec.wall_time_s:.0f} s)")
        self.say(f"eval step {step} (epoch {epoch:.2f}): top-1 {metrics['top1']:.4f} "
                 f"top-5 {metrics['top5']:.4f} loss {metrics['loss']:.4f}")
        return metrics

    def _save(self, step: int, state: state_lib.TrainState, train_iter: Any,
              progress: RunProgress, eval_metrics: Mapping[str, float] | None = None) -> None:
        meta = progress.to_meta(step, checkpoint_lib.encode_iterator_state(
            train_iter.get_state()))
        metrics = {"top1": float(eval_metrics["top1"])} if eval_metrics else None
        self.ckpt.save(step, state, meta, metrics=metrics)

    def _stop_now(self, step: int, start_step: int, state: state_lib.TrainState,
                  train_iter: Any, progress: RunProgress) -> None:
        """Checkpoint the current step (after the finiteness check) and raise Interrupted."""
        signum = self.stop.signum
        name = signal.Signals(signum).name
        self.say(f"{name} received: stopping at step {step} and writing a checkpoint (send it "
                 "again to stop at once, without one)")
        self._check_pending(progress)  # a diverged state is never saved: NonFiniteLossError
        if step > start_step:
            self._save(step, state, train_iter, progress)
            self.ckpt.wait()
            where = f"checkpoint step {step} written in {self.ckpt.directory}"
        else:
            latest = self.ckpt.latest_step()
            where = ("no step was done in this session; " + (
                f"the last checkpoint is step {latest} in {self.ckpt.directory}"
                if latest is not None else "no checkpoint exists yet"))
        raise Interrupted(signum, f"stopped by {name} at step {step}; {where}; rerun the same "
                                  "command to resume")

    def _finish(self, step: int, progress: RunProgress) -> dict[str, Any]:
        summary = run_summary.build_summary(self.config, self.facts, progress)
        if self.primary:
            path = self.workdir / "summary.json"
            write_text(path, json.dumps(summary, indent=2, default=metrics_lib._jsonable))
            top1, counter = summary["final"]["top1"], progress.flops
            self.say(f"done: {step} steps, top-1 {'-' if top1 is None else format(top1, '.4f')}, "
                     f"{counter.xla_flops:.3g} training FLOPs (XLA) / "
                     f"{counter.analytic_flops:.3g} (3 x forward); summary in {path}")
        return summary
