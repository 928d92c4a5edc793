"""Faults of a training run, as an adversarial user meets them: divergence, unreadable data,
bad values, kill -9 / SIGTERM / Ctrl-C, disk full, wrong or changed workdirs.

Every run is tiny: the 1-conv BatchNorm model of tests/tiny_cli.py on a 4-class synthetic set
at 32 px, batch 8. In-process runs call ``train.__main__.main`` (exit code + stderr); runs that
are killed, limited or signalled are subprocesses of tests/tiny_cli.py (the same command line).
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from train import __main__ as cli
from train import data, errors, run_config

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_CLI = REPO / "tests" / "tiny_cli.py"
CONFIG = str(REPO / "configs" / "default.py")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> pathlib.Path:
    """4 classes x 16 train + 4 val images, 40 px."""
    return data.ensure_synthetic_dataset(tmp_path_factory.mktemp("synth"), num_classes=4,
                                         train_per_class=16, val_per_class=4, image_size=40)


def _args(workdir, data_dir, **overrides) -> list[str]:
    keys = dict(data_dir=str(data_dir), image_size=32, batch_size=8, eval_batch_size=8,
                num_workers=0, max_steps=4, eval_every_steps=4, checkpoint_every_steps=2,
                log_every_steps=1, speed_check_batches=0, progress_bar=False,
                learning_rate=2e-2, warmup_epochs=0.5)
    keys.update(overrides)
    return ["--config", CONFIG, "--workdir", str(workdir)] + [
        f"--config.{k}={v}" for k, v in keys.items()]


@pytest.fixture
def run_main(monkeypatch, capsys):
    """Run the command line in-process with the tiny model: returns (exit code, stderr)."""
    import tiny_cli

    import convfirst_jax

    monkeypatch.setattr(convfirst_jax, "create_model", tiny_cli.tiny_factory)

    def run(workdir, data_dir, **overrides) -> tuple[int, str]:
        rc = cli.main(_args(workdir, data_dir, **overrides))
        out = capsys.readouterr()
        run.stdout = out.out
        return rc, out.err

    return run


_JAX_CACHE: list[str] = []  # one persistent compilation cache for the module's subprocesses


@pytest.fixture(scope="module", autouse=True)
def _shared_compile_cache(tmp_path_factory):
    _JAX_CACHE[:] = [str(tmp_path_factory.mktemp("jax_cache"))]
    yield
    _JAX_CACHE.clear()


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONUNBUFFERED="1", JAX_COMPILATION_CACHE_DIR=_JAX_CACHE[0],
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **extra)
    return env


def _spawn(workdir, data_dir, env, **overrides) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(TINY_CLI)] + _args(workdir, data_dir, **overrides),
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _checkpoint_steps(workdir) -> list[int]:
    d = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _wait_for(predicate, proc, timeout=120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError("the run ended too early:\n" + proc.stdout.read())
        time.sleep(0.05)
    raise AssertionError("timed out")


def _wait_for_step(proc, step: int) -> list[str]:
    """Read the run's output until it logs ``step`` (or more); returns the lines read."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("[train] step ") and int(line.split()[2].split("/")[0]) >= step:
            return lines
    raise AssertionError("the run ended before step %d:\n%s" % (step, "".join(lines)))


def _records(workdir) -> list[dict]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] \
        if path.exists() else []


def _assert_one_record_per_step(workdir, total_steps) -> None:
    keys = [(r["split"], r["step"]) for r in _records(workdir)]
    assert len(keys) == len(set(keys)), keys
    assert [s for split, s in keys if split == "train"] == list(range(1, total_steps + 1))


def _children(pid: int) -> list[int]:
    out = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _assert_saved_state_finite(workdir) -> None:
    import orbax.checkpoint as ocp
    steps = _checkpoint_steps(workdir)
    assert steps
    for s in steps:
        tree = ocp.PyTreeCheckpointer().restore(pathlib.Path(workdir) / "checkpoints" / str(s)
                                                / "state")
        import jax
        leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
        assert leaves and all(np.isfinite(x).all() for x in leaves
                              if np.issubdtype(x.dtype, np.floating)), s


# ----------------------------------------------------------------------------------------------
# 1. divergence never leaves a non-finite checkpoint; the advised rerun works


def test_update_that_makes_weights_non_finite_is_never_saved(tiny_data, tmp_path, run_main):
    """lr 1e6, a checkpoint every step, only NaN/Inf counted as divergence: the update that
    first overflows happens on a checkpoint step, while its loss (measured before the update)
    is still finite. That state must not be saved."""
    workdir = tmp_path / "div"
    rc, err = run_main(workdir, tiny_data, learning_rate=1e6, max_steps=40, eval_every_steps=40,
                       checkpoint_every_steps=1, divergence_loss=1e30)
    assert rc == errors.EXIT_DIVERGED, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "the training diverged" in lines[0], err
    last = max(_checkpoint_steps(workdir))
    assert f"the update of step {last + 1} made the weights" in lines[0]
    assert f"last good checkpoint is step {last}" in lines[0]
    _assert_saved_state_finite(workdir)
    assert not (workdir / "summary.json").exists()


def test_real_divergence_rerun_as_advised_resumes_from_a_good_checkpoint(tiny_data, tmp_path,
                                                                         run_main):
    workdir = tmp_path / "div"
    kw = dict(max_steps=16, eval_every_steps=16, checkpoint_every_steps=1, warmup_epochs=2.0)
    rc, err = run_main(workdir, tiny_data, learning_rate=1e3, **kw)
    assert rc == errors.EXIT_DIVERGED and len(err.strip().splitlines()) == 1, err
    assert "is above divergence_loss=20: the training diverged" in err  # 4 classes: auto 20
    good = max(_checkpoint_steps(workdir))
    moved = sorted(int(p.name) for p in (workdir / "diverged_checkpoints").iterdir())
    assert moved and min(moved) == good + 1 and f"last good checkpoint is step {good}" in err
    # The loss of step good + 1 (the weights of checkpoint good) was still sane; the diverged
    # step good + 2 has no record.
    train = {r["step"]: r["loss"] for r in _records(workdir) if r["split"] == "train"}
    assert train[good + 1] < 20 and max(train) == good + 1
    _assert_saved_state_finite(workdir)
    assert "--config.learning_rate=LOWER --config.allow_config_change=True" in err
    kw["checkpoint_every_steps"] = 100  # a free key: not a change of settings
    rc, err = run_main(workdir, tiny_data, learning_rate=2e-2, allow_config_change=True, **kw)
    assert rc == 0, err
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["final"]["train_loss"] < 20 and np.isfinite(summary["final"]["loss"])
    change = json.loads((workdir / run_config.CONFIG_CHANGES_FILE).read_text().splitlines()[-1])
    assert change["step"] == good and change["changed"] == {
        "learning_rate": {"stored": 1e3, "now": 2e-2}}
    _assert_one_record_per_step(workdir, 16)


def test_nan_loss_stops_with_exit_1(tiny_data, tmp_path, run_main, monkeypatch):
    # NaN loss at step 5 = the weights after update 4 are bad: checkpoint 4 is moved aside.
    import tiny_cli

    from train import state as state_lib
    monkeypatch.setattr(state_lib, "train_step", tiny_cli.nan_loss_at(5))
    rc, err = run_main(tmp_path / "nan", tiny_data, max_steps=8)
    assert rc == 1 and "non-finite training loss nan at step 5" in err
    assert "last good checkpoint is step 2" in err and _checkpoint_steps(tmp_path / "nan") == [2]
    assert (tmp_path / "nan" / "diverged_checkpoints" / "4").is_dir()


# ----------------------------------------------------------------------------------------------
# 2, 3, 11. bad data and values: one line, exit 2, no workdir left behind


def _garbage_copy(src: pathlib.Path, dst: pathlib.Path, splits=("train", "val")) -> None:
    shutil.copytree(src, dst)
    for split in splits:
        for p in (dst / split).rglob("*"):
            if p.is_file():
                p.write_bytes(b"not an image")


def test_all_unreadable_folder_is_one_error_naming_folder_and_count(tiny_data, tmp_path,
                                                                    run_main):
    bad = tmp_path / "bad"
    _garbage_copy(tiny_data, bad)
    rc, err = run_main(tmp_path / "w", bad)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"all 64 image files of {str(bad / 'train')!r} are unreadable" in err
    assert not (tmp_path / "w").exists()
    badval = tmp_path / "badval"
    _garbage_copy(tiny_data, badval, splits=("val",))
    rc, err = run_main(tmp_path / "w", badval)
    assert rc == 2 and f"all 16 image files of {str(badval / 'val')!r} are unreadable" in err
    assert not (tmp_path / "w").exists()


def test_empty_class_folder_is_an_error_unless_allowed_and_the_scan_is_printed(
        tiny_data, tmp_path, run_main):
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    (root / "train" / "zz_empty").mkdir()
    (root / "train" / "c00_red_solid_circle" / "notes.txt").write_text("x")
    rc, err = run_main(tmp_path / "w", root)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "contain no images: zz_empty" in err and "--config.allow_empty_classes=True" in err
    assert not (tmp_path / "w").exists()
    rc, err = run_main(tmp_path / "w", root, allow_empty_classes=True)
    assert rc == 0, err
    assert "classes (5): c00_red_solid_circle" in run_main.stdout
    assert "empty (allowed): zz_empty" in run_main.stdout
    assert "64 images in 5 class folders; skipped: 1 not an image extension (.txt)" in \
        run_main.stdout
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["num_classes"] == 5


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_learning_rate_is_refused(tiny_data, tmp_path, run_main, value):
    rc, err = run_main(tmp_path / "w", tiny_data, learning_rate=value)
    assert rc == 2 and "config.learning_rate must be a finite number" in err, err
    assert not (tmp_path / "w").exists()


def test_missing_data_dir_names_the_real_flag_and_leaves_no_workdir(tmp_path, run_main):
    rc, err = run_main(tmp_path / "w", tmp_path / "nowhere")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "--config.data_dir=" in err and "--data-dir" not in err
    assert not (tmp_path / "w").exists()


def test_help_into_a_closed_pipe_is_quiet():
    proc = subprocess.Popen([sys.executable, "-m", "train", "--help"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head` that has already exited
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
    out = subprocess.run([sys.executable, "-m", "train", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60).stdout
    assert "allow_config_change" in out and "exit codes:" in out
    for code in errors.EXIT_CODES:
        assert f"{code:3d}  " in out


# ----------------------------------------------------------------------------------------------
# 5. another model or changed settings in a workdir


def test_workdir_of_another_model_or_changed_settings(tiny_data, tmp_path, run_main):
    workdir = tmp_path / "run"
    assert run_main(workdir, tiny_data)[0] == 0
    stored = (workdir / "config.json").read_text()
    rc, err = run_main(workdir, tiny_data, model="convnext_atto")
    assert rc == errors.EXIT_WORKDIR_MISMATCH and len(err.strip().splitlines()) == 1, err
    assert "holds a convfirst_atto run (checkpoint step 4)" in err
    assert "asks for model convnext_atto" in err
    rc, err = run_main(workdir, tiny_data, max_steps=6, learning_rate=0.01)
    assert rc == errors.EXIT_WORKDIR_MISMATCH and len(err.strip().splitlines()) == 1, err
    assert "learning_rate: 0.02 -> 0.01; max_steps: 4 -> 6" in err
    assert "--config.allow_config_change=True" in err
    assert (workdir / "config.json").read_text() == stored  # nothing overwritten
    # Allowed: resumes from step 4 with the new schedule, records the change.
    rc, err = run_main(workdir, tiny_data, max_steps=6, allow_config_change=True)
    assert rc == 0, err
    change = json.loads((workdir / run_config.CONFIG_CHANGES_FILE).read_text())
    assert change["step"] == 4 and change["changed"] == {"max_steps": {"stored": 4, "now": 6}}
    assert json.loads((workdir / "config.json").read_text())["max_steps"] == 6
    _assert_one_record_per_step(workdir, 6)
    # A change of the state's structure (EMA on) cannot resume even when allowed: one line.
    rc, err = run_main(workdir, tiny_data, max_steps=8, ema_decay=0.9, allow_config_change=True)
    assert rc == errors.EXIT_WORKDIR_MISMATCH and len(err.strip().splitlines()) == 1, err
    assert "does not fit this model and optimizer" in err and len(err) < 600
    # Free keys (printing / logging) never count as a change.
    rc, err = run_main(workdir, tiny_data, max_steps=6, progress_bar=True, log_every_steps=3)
    assert rc == 0, err


# ----------------------------------------------------------------------------------------------
# 6. unusable workdir, full disk


def test_unusable_workdir_is_one_error_with_its_own_code(tiny_data, tmp_path, run_main):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    rc, err = run_main(a_file, tiny_data)
    assert rc == errors.EXIT_WORKDIR and len(err.strip().splitlines()) == 1, err
    assert "is a file, not a folder" in err
    rc, err = run_main(a_file / "below", tiny_data)
    assert rc == errors.EXIT_WORKDIR and "cannot create --workdir" in err, err
    if pathlib.Path("/sys/kernel").is_dir():  # a folder nobody (not even root) can write into
        rc, err = run_main("/sys/kernel", tiny_data)
        assert rc == errors.EXIT_WORKDIR and "'/sys/kernel' is not writable" in err, err
    if os.geteuid() != 0:  # root may write anywhere else
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        rc, err = run_main(ro, tiny_data)
        assert rc == errors.EXIT_WORKDIR and "is not writable" in err, err


def test_disk_full_during_checkpoint_stops_at_once_and_keeps_last_complete(tiny_data, tmp_path):
    workdir = tmp_path / "full"
    env = _env(TINY_STEP_SLEEP="0.15", TINY_IGNORE_SIGXFSZ="1")
    # log_every_steps=100: metrics.jsonl stays small, so the checkpoint write is what fails.
    kw = dict(max_steps=40, eval_every_steps=40, log_every_steps=100)
    proc = _spawn(workdir, tiny_data, env, **kw)
    _wait_for(lambda: _checkpoint_steps(workdir), proc)
    # From now on every file write beyond 256 bytes fails with EFBIG, as on a full disk.
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (256, 256))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == errors.EXIT_WRITE_FAILED, out
    assert "Traceback" not in out and "Warning" not in out and len(out.splitlines()) < 30, out
    error = [ln for ln in out.splitlines() if ln.startswith("error:")]
    kept = _checkpoint_steps(workdir)
    assert len(error) == 1 and "could not write checkpoint step" in error[0], out
    assert "File too large" in error[0] and kept == [2], out
    assert "the last complete checkpoint is step 2 (kept)" in error[0]
    assert not any("tmp" in p.name for p in (workdir / "checkpoints").iterdir())
    assert "could not write checkpoint step 4 " in error[0]
    # Stopped at once (at the next check, step 6): the epoch-8 record was never written.
    assert not [r for r in _records(workdir) if r["step"] >= 8]
    # Space again: the same command resumes from the last complete checkpoint and finishes.
    proc = _spawn(workdir, tiny_data, _env(), **kw)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "resumed from checkpoint step 2" in out
    keys = [(r["split"], r["step"]) for r in _records(workdir)]
    assert len(keys) == len(set(keys)) and ("eval", 40) in keys


def test_abandoned_checkpoint_write_is_not_logged_twice():
    """asyncio logs "Future exception was never retrieved" for orbax's other file writes of a
    failed save, often after the one error line; those whose traceback passes through orbax
    (the message names only the OSError) are dropped, any other such record is kept."""
    import logging

    from train import checkpoint

    def record_of(filename: str) -> logging.LogRecord:
        namespace: dict = {}
        exec(compile("def write():\n    raise OSError(27, 'File too large')\n", filename,
                     "exec"), namespace)
        try:
            try:
                namespace["write"]()
            except OSError as inner:
                raise OSError(27, "File too large") from inner
        except OSError as e:
            exc_info = (type(e), e, e.__traceback__)
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1,
                                 "Future exception was never retrieved\nfuture: <Future "
                                 "finished exception=OSError(27, 'File too large')>", None,
                                 exc_info)

    quiet = checkpoint._QuietAbandonedWrites()
    assert not quiet.filter(record_of("/site-packages/orbax/checkpoint/_src/path/async_path.py"))
    assert quiet.filter(record_of("/somewhere/else/user_code.py"))


# ----------------------------------------------------------------------------------------------
# 4, 7. kill -9 before the first checkpoint; orphans; Ctrl-C / SIGTERM


def _interrupt_and_check(proc, workdir, children, how: str) -> int:
    """Send ``how`` to a running tiny run; check the clean stop; return the checkpoint step."""
    if how == "sigterm":
        os.kill(proc.pid, signal.SIGTERM)
    else:  # a terminal sends Ctrl-C to the whole foreground process group
        os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    code = errors.EXIT_SIGTERM if how == "sigterm" else errors.EXIT_SIGINT
    assert proc.returncode == code, out
    assert "shared_memory" not in out and "Traceback" not in out, out
    error = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(error) == 1, out
    step = max(_checkpoint_steps(workdir))
    name = "SIGTERM" if how == "sigterm" else "SIGINT"
    assert (f"stopped by {name} at step {step}; checkpoint step {step} written" in error[0]
            and "rerun the same command to resume" in error[0]), error[0]
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(c) for c in children):
        time.sleep(0.05)
    assert not any(_alive(c) for c in children), "worker processes outlived the run"
    return step


def test_kill_9_then_ctrl_c_then_sigterm_then_finish(tiny_data, tmp_path):
    """One workdir, four runs of the same command (with a data-loader worker process):
    kill -9 before the first checkpoint (the worker must die too), Ctrl-C, SIGTERM, then to
    the end; every stop resumes where it said, and metrics.jsonl has one record per step."""
    workdir = tmp_path / "k"
    kw = dict(max_steps=14, eval_every_steps=14, checkpoint_every_steps=100, num_workers=1)
    slow = _env(TINY_STEP_SLEEP="0.1")

    proc = _spawn(workdir, tiny_data, slow, **kw)
    _wait_for_step(proc, 2)
    children = _children(proc.pid)
    assert children, "expected a grain worker process"
    assert not _checkpoint_steps(workdir)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    deadline = time.time() + 10  # the worker (and multiprocessing's resource tracker) follow
    while time.time() < deadline and any(_alive(c) for c in children):
        time.sleep(0.05)
    assert not any(_alive(c) for c in children), "orphaned worker processes after kill -9"

    proc = _spawn(workdir, tiny_data, slow, **kw)  # starts afresh: no checkpoint yet
    _wait_for_step(proc, 3)
    first = _interrupt_and_check(proc, workdir, _children(proc.pid), "ctrl_c")
    assert 3 <= first < 14

    proc = _spawn(workdir, tiny_data, slow, **kw)
    assert any(f"resumed from checkpoint step {first}" in ln
               for ln in _wait_for_step(proc, first + 2))
    second = _interrupt_and_check(proc, workdir, _children(proc.pid), "sigterm")
    assert first < second < 14

    proc = _spawn(workdir, tiny_data, _env(), **kw)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and f"resumed from checkpoint step {second}" in out, out
    _assert_one_record_per_step(workdir, 14)
    assert ("eval", 14) in [(r["split"], r["step"]) for r in _records(workdir)]


def test_readme_documents_every_exit_code():
    text = (REPO / "README.md").read_text()
    section = text.split("## Training", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.strip().startswith("| ")
            and ln.split("|")[1].strip()[:1].isdigit()]
    codes = {int(c) for ln in rows for c in ln.split("|")[1].split("/")}
    assert codes == set(errors.EXIT_CODES), (codes, set(errors.EXIT_CODES))


def test_checkpoint_of_replicated_state_compiles_one_program(tmp_path):
    """Saving a state replicated over 4 devices compiles one copy program for the whole tree,
    not one slice program per array and device (orbax's replica-parallel default, which cost
    ~4 s per save of convfirst_atto on 2 CPU devices); the restore is bit-exact."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from train.checkpoint import Checkpointer

    mesh = jax.make_mesh((4,), ("data",))
    replicated = NamedSharding(mesh, P())
    state = {f"w{i}": jax.device_put(jnp.arange(64.0 * (i + 1)).reshape(8, -1), replicated)
             for i in range(24)}
    compiles = []

    def listener(event, secs, **kwargs):
        if "backend_compile" in event:
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        ckpt = Checkpointer(tmp_path / "ckpt", async_save=False)
        ckpt.save(1, state, {"note": "x"})
        ckpt.wait()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert len(compiles) <= 2, compiles
    restored, meta = ckpt.restore(1, state)
    ckpt.close()
    assert meta == {"note": "x"}
    for k, v in state.items():
        assert restored[k].sharding == v.sharding
        np.testing.assert_array_equal(np.asarray(restored[k]), np.asarray(v))
