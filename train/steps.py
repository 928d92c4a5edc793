"""The device side of training: the 1-D data mesh, jitted train / eval steps, global batches,
an eval pass over the whole val split and the start-up speed check."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from train import metrics as metrics_lib
from train import state as state_lib

BATCH_KEYS = ("image", "label", "valid")


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


def to_global(batch: Mapping[str, Any], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This host's batch (numpy) -> global jax.Arrays sharded over the batch axis."""
    out = {}
    for k in BATCH_KEYS:
        if k not in batch:
            raise ValueError(f"data loader batches must have keys {BATCH_KEYS}; missing {k!r}")
        out[k] = jax.make_array_from_process_local_data(sharding, np.asarray(batch[k]))
    return out


def abstract_batch(batch_size: int, image_size: int, sharding: NamedSharding) -> dict:
    """ShapeDtypeStructs of one global batch (to compile the train step ahead of time)."""
    sds = functools.partial(jax.ShapeDtypeStruct, sharding=sharding)
    return {"image": sds((batch_size, image_size, image_size, 3), jnp.float32),
            "label": sds((batch_size,), jnp.int32),
            "valid": sds((batch_size,), jnp.float32)}


def cost_flops(compiled: Any) -> float:
    """FLOPs of a compiled executable from XLA's cost analysis (0.0 when unavailable)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (some backends have no cost model)
        return 0.0
    return float((cost or {}).get("flops", 0.0))


def evaluate(jit_eval: Any, state: state_lib.TrainState, eval_loader: Any,
             batch_sharding: NamedSharding, *, progress_bar: bool, measure_latency: bool
             ) -> tuple[dict[str, float], float | None]:
    """Top-1 / top-5 / loss over the whole eval split (EMA weights when the EMA is on), and
    the median latency (ms) of one eval batch when ``measure_latency``."""
    variables = state_lib.eval_variables(state)
    acc = metrics_lib.EvalAccumulator()
    batch = None
    bar = None
    if progress_bar and jax.process_index() == 0:
        from tqdm import tqdm  # noqa: PLC0415  (training-only dependency)
        n = getattr(eval_loader, "num_examples_local",
                    getattr(eval_loader, "num_examples", None))
        bar = tqdm(total=n, unit="img", desc="eval", leave=False, dynamic_ncols=True,
                   mininterval=2.0, file=sys.stderr)
    try:
        for host_batch in eval_loader:  # each host iterates its own shard of the val split
            batch = to_global(host_batch, batch_sharding)
            acc.add(jit_eval(*variables, batch))
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


def speed_check(config: ml_collections.ConfigDict, loader: Any, compiled: Any,
                state: state_lib.TrainState, batch_sharding: NamedSharding,
                replicated: NamedSharding, say: Any) -> dict[str, float]:
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
        batch = to_global(batches[-1], batch_sharding)
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
