"""Training loop: loss falls, sharded == single-device, kill -9 resume, NaN stop, bad files,
FLOPs-to-target bookkeeping.

Tiny everything: a 4-class synthetic set generated into tmp (32 px crops), batch 8. The
in-process tests of the loop's bookkeeping and sharding use a 1-conv BatchNorm model (compiles
in seconds). Command-line runs on 2 simulated devices: loss falls with convfirst_atto, the
smallest ConvFirst; kill -9 + resume == uninterrupted with the 1-conv model (tests/tiny_cli.py).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from train import data, flops, loop
from train import steps as steps_lib
from train import state as state_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
BATCH = 8


# ----------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> pathlib.Path:
    """4 classes x 16 train (two full batches of 8 per class) + 4 val images, 40 px."""
    return data.ensure_synthetic_dataset(tmp_path_factory.mktemp("synth"), num_classes=4,
                                         train_per_class=16, val_per_class=4, image_size=40)


def tiny_config(data_dir, **overrides):
    from configs import default
    c = default.get_config()
    c.update(dict(model="convfirst_atto", data_dir=str(data_dir), image_size=32,
                  batch_size=BATCH, eval_batch_size=BATCH, num_workers=0, max_steps=8,
                  eval_every_steps=4, log_every_steps=2, checkpoint_every_steps=2,
                  speed_check_batches=0, progress_bar=False, warmup_epochs=0.5,
                  learning_rate=2e-2))
    c.update(overrides)
    c.lock()
    return c


class TinyNet(nnx.Module):
    """conv 3x3 / 2 -> BatchNorm -> ReLU -> mean pool -> linear: the loop's bookkeeping model."""

    def __init__(self, num_classes: int, dtype, param_dtype, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), strides=2, dtype=dtype, param_dtype=param_dtype,
                             rngs=rngs)
        self.bn = nnx.BatchNorm(8, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.head = nnx.Linear(8, num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x)))
        return self.head(x.mean(axis=(1, 2))).astype(jnp.float32)


def tiny_factory(name, *, num_classes, block_impl, dtype, param_dtype, drop_path, seed):
    del name, block_impl, drop_path
    return TinyNet(num_classes, dtype, param_dtype, nnx.Rngs(seed))


# ----------------------------------------------------------------------------------------------
# Pure bookkeeping


def test_flops_to_target_on_scripted_sequence():
    tracker = flops.TargetTracker([0.8, 0.5, 0.7, 0.95])
    counter = flops.FlopsCounter(step_flops=1e9, forward_flops_per_image=1e6)
    script = [(100, 0.30), (200, 0.55), (300, 0.52), (400, 0.72), (500, 0.85), (600, 0.60)]
    reached_at = {}
    done = 0
    for step, top1 in script:
        counter.add_steps(step - done, 64 * (step - done))
        done = step
        for rec in tracker.update(step=step, epoch=step / 100, wall_time_s=step * 0.5,
                                  train_flops=counter.train_flops, top1=top1):
            reached_at[rec.target] = rec
    # Independent expectation: first eval with top1 >= target.
    assert {t: r.step for t, r in reached_at.items()} == {0.5: 200, 0.7: 400, 0.8: 500}
    assert tracker.records[0.95] is None
    assert reached_at[0.7].train_flops == pytest.approx(400 * 1e9)
    assert reached_at[0.7].wall_time_s == pytest.approx(200.0)
    assert reached_at[0.8].top1 == pytest.approx(0.85)
    # Cumulative counters: XLA = step FLOPs x steps; analytic = 3 x forward x images.
    assert counter.xla_flops == pytest.approx(600 * 1e9)
    assert counter.analytic_flops == pytest.approx(3 * 1e6 * 64 * 600)
    assert counter.ratio == pytest.approx(600e9 / (3e6 * 64 * 600))
    # JSON round trip (checkpoint meta) keeps the records; a later dip changes nothing.
    back = flops.TargetTracker.from_json(json.loads(json.dumps(tracker.to_json())))
    assert back.records == tracker.records
    assert back.update(step=700, epoch=7, wall_time_s=1, train_flops=1, top1=0.99)[0].target == 0.95

    # Ratios against a baseline (Hernandez & Brown's "x less compute").
    runs = {"base": {"targets": tracker.to_json()},
            "fast": {"targets": {"0.5": {"train_flops": 50e9}, "0.7": {"train_flops": 100e9},
                                 "0.8": None, "0.95": None}}}
    ratios = flops.flops_to_target_ratios(runs, "base")
    assert ratios["fast"][0.5] == pytest.approx(50e9 / 200e9)
    assert ratios["fast"][0.7] == pytest.approx(100e9 / 400e9)
    assert ratios["fast"][0.8] is None and ratios["base"][0.8] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="baseline run 'nope' not found"):
        flops.flops_to_target_ratios(runs, "nope")
    with pytest.raises(ValueError, match="fractions"):
        flops.TargetTracker([70])


def test_lr_schedule_and_decay_mask():
    sched = state_lib.lr_schedule(1.0, total_steps=10, warmup_steps=4)
    steps = np.arange(10)
    ref = np.where(steps < 4, (steps + 1) / 4,
                   0.5 * (1 + np.cos(np.pi * np.clip((steps - 4) / 6, 0, 1))))
    np.testing.assert_allclose(np.asarray(jax.vmap(sched)(steps)), ref, rtol=1e-6, atol=1e-7)
    params = nnx.state(TinyNet(3, jnp.float32, jnp.float32, nnx.Rngs(0)), nnx.Param)
    mask = state_lib.weight_decay_mask(params)
    from flax import traverse_util
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(mask), sep="/")
    assert flat == {"bn/bias": False, "bn/scale": False, "conv/bias": False,
                    "conv/kernel": True, "head/bias": False, "head/kernel": True}


# ----------------------------------------------------------------------------------------------
# The jitted train step: 4-device data parallel == 1 device


def _run_tiny_steps(tx, batches, devices):
    model = TinyNet(4, jnp.float32, jnp.float32, nnx.Rngs(0))
    sched = state_lib.lr_schedule(0.1, total_steps=10, warmup_steps=0)
    defs, state = state_lib.create_train_state(model, tx, use_ema=True)
    mesh = steps_lib.make_mesh(devices)
    losses = []
    with jax.set_mesh(mesh):
        jit_train, jit_eval = steps_lib.jit_steps(defs, tx, sched, mesh, label_smoothing=0.1,
                                             ema_decay=0.9)
        state = jax.device_put(state, NamedSharding(mesh, P()))
        for b in batches:
            state, m = jit_train(state, steps_lib.to_global(b, NamedSharding(mesh, P("data"))))
            losses.append(float(m["loss"]))
        sums = jit_eval(*state_lib.eval_variables(state),
                        steps_lib.to_global(batches[0], NamedSharding(mesh, P("data"))))
    return jax.device_get(state), losses, jax.device_get(sums)


def test_sharded_step_equals_single_device(tiny_data):
    if len(jax.devices()) < 4:
        pytest.skip("needs 4 devices (tests/conftest.py sets 4 simulated CPU devices)")
    it = iter(data.build_train_loader(tiny_data, image_size=32, global_batch_size=BATCH, seed=0,
                                      num_workers=0))
    batches = [next(it) for _ in range(3)]
    batches[1]["valid"][3] = 0.0  # a masked example must be masked identically on 4 devices
    # SGD with momentum: the update is linear in the gradient, so the comparison measures the
    # sharded computation itself (Adam's g / sqrt(v) would amplify float-order noise in
    # near-zero gradients). BatchNorm statistics are over the global batch in both cases.
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                               optax.sgd(0.1, momentum=0.9))
    s1, l1, e1 = _run_tiny_steps(tx, batches, jax.devices()[:1])
    s4, l4, e4 = _run_tiny_steps(tx, batches, jax.devices()[:4])
    np.testing.assert_allclose(l4, l1, rtol=1e-6)
    for name in ("params", "batch_stats", "ema_params", "ema_batch_stats"):
        a, b = jax.tree.leaves(getattr(s1, name)), jax.tree.leaves(getattr(s4, name))
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-7)
    for k in e1:
        np.testing.assert_allclose(e4[k], e1[k], rtol=1e-6)
    assert int(s4.step) == 3


# ----------------------------------------------------------------------------------------------
# The loop's bookkeeping (tiny model, in-process)


def _corrupt_copy(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Copy the set; 2 unreadable train files, 1 unreadable val file, 1 grayscale train JPEG."""
    shutil.copytree(src, dst)
    train_files = sorted((dst / "train").rglob("*.*"))
    train_files = [p for p in train_files if p.suffix.lower() in data.IMAGE_EXTENSIONS]
    train_files[0].write_bytes(b"this is not an image")
    train_files[1].write_bytes(train_files[1].read_bytes()[:100])  # truncated header
    gray = train_files[2]
    Image.open(gray).convert("L").save(gray.with_suffix(".JPEG"), "JPEG")
    if gray.suffix != ".JPEG":
        gray.unlink()
    val_files = sorted(p for p in (dst / "val").rglob("*.*")
                       if p.suffix.lower() in data.IMAGE_EXTENSIONS)
    val_files[0].write_bytes(b"")


def test_corrupt_and_grayscale_files_are_masked_and_counted(tiny_data, tmp_path):
    root = tmp_path / "corrupt"
    _corrupt_copy(tiny_data, root)
    n_train = len(data.list_images(root, "train")[0])
    assert n_train == 64  # 8 full batches: one epoch sees every file exactly once
    config = tiny_config(root, max_steps=8, eval_every_steps=8, checkpoint_every_steps=8)
    summary = loop.train_and_evaluate(config, tmp_path / "run", model_factory=tiny_factory)
    assert summary["invalid_train_images"] == 2
    final_eval = [r for r in _jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "eval"]
    assert final_eval[-1]["unreadable"] == 1 and final_eval[-1]["count"] == 15
    epoch = [r for r in _jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "epoch"]
    assert epoch[0]["invalid_train_images"] == 2
    assert math.isfinite(summary["final"]["loss"]) and math.isfinite(summary["final"]["train_loss"])


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tiny_data, tmp_path,
                                                                    monkeypatch, capsys):
    import convfirst_jax
    from tiny_cli import nan_loss_at
    from train.__main__ import main
    monkeypatch.setattr(convfirst_jax, "create_model", tiny_factory)
    monkeypatch.setattr(state_lib, "train_step", nan_loss_at(5))
    workdir = tmp_path / "nan"
    rc = main(["--config", str(REPO / "configs" / "cpu_small.py") + ":convfirst_atto",
               "--workdir", str(workdir), f"--config.data_dir={tiny_data}",
               "--config.image_size=32", "--config.batch_size=8", "--config.eval_batch_size=8",
               "--config.num_workers=0", "--config.max_steps=8", "--config.eval_every_steps=8",
               "--config.checkpoint_every_steps=2", "--config.log_every_steps=4",
               "--config.speed_check_batches=0", "--config.progress_bar=false"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "non-finite training loss nan at step 5" in err
    # The loss of step 5 is that of the weights after update 4: checkpoint 4 is moved aside.
    assert "last good checkpoint is step 2" in err
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and max(steps) == 2
    assert (workdir / "diverged_checkpoints" / "4").is_dir()
    assert not (workdir / "summary.json").exists()


def _jsonl(path):
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line]


# ----------------------------------------------------------------------------------------------
# The real command line: loss falls; kill -9 + resume == uninterrupted (one subprocess per run)

CLI_STEPS = 30


def _cli_env(tmp: pathlib.Path, **extra) -> dict:
    """2 simulated devices (sharded data parallel) and one persistent compile cache."""
    env = dict(os.environ)
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **extra)
    return env


def _cli(workdir: pathlib.Path, data_dir: pathlib.Path, env: dict, *,
         tiny: bool = False) -> subprocess.Popen:
    """``python -m train`` on convfirst_atto, or (``tiny``) the same command line with the
    1-conv BatchNorm model of tests/tiny_cli.py."""
    entry = ([str(REPO / "tests" / "tiny_cli.py"), "--config", "configs/default.py"] if tiny
             else ["-m", "train", "--config", "configs/cpu_small.py:convfirst_atto"])
    cmd = [sys.executable, *entry,
           "--workdir", str(workdir), f"--config.data_dir={data_dir}", "--config.image_size=32",
           "--config.batch_size=16", "--config.eval_batch_size=8", "--config.num_workers=0",
           f"--config.max_steps={CLI_STEPS}", "--config.eval_every_steps=10",
           "--config.checkpoint_every_steps=10", "--config.log_every_steps=2",
           "--config.speed_check_batches=0", "--config.progress_bar=false",
           "--config.learning_rate=0.1", "--config.warmup_epochs=0.5", "--config.ema_decay=0.9"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def cli_runs(tiny_data, tmp_path_factory):
    """Command-line runs on 2 simulated devices (sharded data parallel):

    * "real": one uninterrupted run of convfirst_atto (its cold compile is ~25 s, so it runs
      in the background while the others go on);
    * the same command line with the 1-conv model of tests/tiny_cli.py (the resume logic does
      not depend on the model): "straight" uninterrupted, and "killed": kill -9 right after
      its first checkpoint, then the same command again (resumes).
    """
    tmp = tmp_path_factory.mktemp("cli")
    env = _cli_env(tmp)
    real_proc = _cli(tmp / "real", tiny_data, env)
    straight, killed = tmp / "straight", tmp / "killed"

    # 50 ms per step (outside the step) so that the kill lands between checkpoints 10 and 20.
    proc = _cli(killed, tiny_data, _cli_env(tmp, TINY_STEP_SLEEP="0.05"), tiny=True)
    ckpts = killed / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before its first checkpoint:\n" + proc.stdout.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first_out = proc.stdout.read()
    proc.stdout.close()
    assert not (killed / "summary.json").exists(), "killed too late: the run had finished"

    # The resumed run and the uninterrupted reference run side by side (compile cache warm).
    resumed_proc = _cli(killed, tiny_data, env, tiny=True)
    straight_proc = _cli(straight, tiny_data, env, tiny=True)
    resumed_out = _finish(resumed_proc)
    straight_out = _finish(straight_proc)
    _finish(real_proc)
    return {"real": tmp / "real", "straight": straight, "killed": killed,
            "first_out": first_out, "resumed_out": resumed_out, "straight_out": straight_out}


def test_loss_falls_over_30_steps(cli_runs):
    records = _jsonl(cli_runs["real"] / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in train][-1] == CLI_STEPS and len(train) == CLI_STEPS // 2
    losses = [r["loss"] for r in train]
    assert all(math.isfinite(x) for x in losses)
    # Train loss (2-step means, batch 16): the last 10 steps clearly below the first 10.
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.85 * first, losses
    # Held-out: 4 classes, chance is top-1 0.25 and cross-entropy ln 4 = 1.39.
    assert evals[-1]["loss"] < 0.8 * math.log(4), evals
    assert evals[-1]["top1"] > 0.5, evals
    summary = json.loads((cli_runs["real"] / "summary.json").read_text())
    assert summary["devices"] == 2 and summary["model"] == "convfirst_atto"
    assert summary["train_step_flops_xla"] > 0 and summary["macs_per_image"] > 0
    # XLA's FLOPs of a train step vs 3 x analytic forward FLOPs: same order of magnitude.
    assert 0.5 < summary["train_flops_ratio_xla_over_analytic"] < 3.0


def test_resume_after_kill_9_equals_uninterrupted(cli_runs):
    assert "resumed from checkpoint step" in cli_runs["resumed_out"], cli_runs["resumed_out"]
    assert "resumed" not in cli_runs["straight_out"]
    a = json.loads((cli_runs["straight"] / "summary.json").read_text())
    b = json.loads((cli_runs["killed"] / "summary.json").read_text())
    assert a["devices"] == b["devices"] == 2
    for key in ("top1", "top5", "loss", "train_loss"):
        assert b["final"][key] == pytest.approx(a["final"][key], rel=1e-5, abs=1e-6), key
    assert [h["top1"] for h in b["history"]] == pytest.approx([h["top1"] for h in a["history"]])
    assert [h["loss"] for h in b["history"]] == pytest.approx(
        [h["loss"] for h in a["history"]], rel=1e-5)
    assert b["train_flops_xla"] == pytest.approx(a["train_flops_xla"])
    assert {k: (v or {}).get("step") for k, v in b["targets"].items()} == \
        {k: (v or {}).get("step") for k, v in a["targets"].items()}
    # metrics.jsonl of the resumed run has no duplicate steps and matches the reference.
    ra = [(r["split"], r["step"], r.get("loss")) for r in _jsonl(cli_runs["straight"] / "metrics.jsonl")]
    rb = [(r["split"], r["step"], r.get("loss")) for r in _jsonl(cli_runs["killed"] / "metrics.jsonl")]
    assert [x[:2] for x in rb] == [x[:2] for x in ra]
    np.testing.assert_allclose([x[2] or 0 for x in rb], [x[2] or 0 for x in ra], rtol=1e-5)
