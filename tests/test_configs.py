"""configs/*.py and the command line of ``python -m train``: keys, types, one clear error."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from convfirst_jax.specs import MODEL_SPECS
from train import __main__ as cli

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py")
REQUIRED_KEYS = {
    "model", "num_classes", "data_dir", "image_size", "batch_size", "num_epochs",
    "learning_rate", "warmup_epochs", "weight_decay", "label_smoothing", "grad_clip_norm",
    "ema_decay", "dtype", "block_impl", "drop_path", "seed", "num_workers", "eval_every_epochs",
    "log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "accuracy_targets",
    "max_steps", "eval_batch_size"}


#: The documented runs: a data-setting config and its model argument.
MODEL_CONFIGS = ["cpu_small.py:convfirst_atto", "cpu_small.py:convnext_atto",
                 "cpu_small.py:resnet18", "gpu_imagenette.py:convfirst_tiny",
                 "gpu_imagenette.py:convnext_tiny", "gpu_imagenette.py:resnet50"]


def test_expected_config_files_exist():
    names = {p.stem for p in CONFIG_FILES}
    assert {"default", "cpu_small", "gpu_imagenette", "study_cpu_imagenette"} <= names


def _check_valid(config, spec):
    from train import run_config
    cli.check_keys(config, spec)
    assert REQUIRED_KEYS <= set(config.keys())
    assert config.model in MODEL_SPECS
    run_config.validate_config(config, num_devices=1)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_file_is_valid(path):
    _check_valid(cli.load_config_file(str(path)), str(path))


@pytest.mark.parametrize("spec", MODEL_CONFIGS)
def test_config_argument_picks_the_model_and_its_changes(spec):
    config = cli.load_config_file(str(REPO / "configs" / spec))
    _check_valid(config, spec)
    assert config.model == spec.split(":")[1]
    if spec.startswith("gpu_"):
        assert config.image_size == 224 and config.dtype == "bfloat16"
    else:
        assert config.image_size == 64 and config.data_dir == ""
    # What differs per model (configs/*.py MODEL_CHANGES); the rest is shared.
    expected_lr = {"resnet18": 2e-3}.get(config.model, 4e-3 if spec.startswith("cpu") else 2e-3)
    assert config.learning_rate == pytest.approx(expected_lr)
    assert config.drop_path == pytest.approx({"resnet50": 0.05}.get(
        config.model, 0.1 if spec.startswith("gpu") else 0.0))


def test_overrides_are_parsed_as_the_default_type(tmp_path):
    config, workdir = cli.build_config([
        "--config.num_epochs=3", "--config", str(REPO / "configs" / "cpu_small.py:resnet18"),
        "--workdir", str(tmp_path), "--config.learning_rate", "1e-3",
        "--config.accuracy_targets=0.5,0.9", "--config.progress_bar=false",
        "--config.data_dir=/some/where", "--config.dtype=bfloat16"])
    assert workdir == str(tmp_path)
    assert config.model == "resnet18" and config.learning_rate == pytest.approx(1e-3)
    assert config.num_epochs == 3 and isinstance(config.num_epochs, int)
    assert config.accuracy_targets == (0.5, 0.9)
    assert config.progress_bar is False
    assert config.data_dir == "/some/where" and config.dtype == "bfloat16"
    with pytest.raises(AttributeError):  # locked: a typo in code fails too
        config.lerning_rate = 1.0


def test_bad_override_value_and_missing_arguments():
    cfg = str(REPO / "configs" / "default.py")
    with pytest.raises(ValueError, match=r"--config.num_epochs='ten': expected a value of type int"):
        cli.build_config(["--config", cfg, "--workdir", "w", "--config.num_epochs=ten"])
    with pytest.raises(ValueError, match="--config and --workdir are required"):
        cli.build_config(["--config", cfg])
    with pytest.raises(ValueError, match="does not exist"):
        cli.build_config(["--config", "configs/nope.py", "--workdir", "w"])
    with pytest.raises(ValueError, match="Unknown command line flag 'data-dir'"):
        cli.build_config(["--config", cfg, "--workdir", "w", "--data-dir=x"])
    with pytest.raises(ValueError, match="unknown argument 'false'"):
        cli.build_config(["--config", cfg, "--workdir", "w", "--config.progress_bar", "false"])
    config, _ = cli.build_config(["--config", cfg, "--workdir", "w", "--noconfig.progress_bar"])
    assert config.progress_bar is False


def test_config_file_with_unknown_key_lists_valid_keys(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from configs import default\n\ndef get_config():\n"
                   "    c = default.get_config()\n    c.modle = 'resnet18'\n    return c\n")
    sys.path.insert(0, str(REPO))
    try:
        with pytest.raises(ValueError, match=r"unknown config key\(s\) modle; valid keys: .*model"):
            cli.check_keys(cli.load_config_file(str(bad)), str(bad))
    finally:
        sys.path.remove(str(REPO))


def test_unknown_key_on_the_command_line_is_one_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "train", "--config", "configs/cpu_small.py:convfirst_atto",
         "--workdir", str(tmp_path / "w"), "--config.lerning_rate=0.1"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    msg = lines[0]
    assert msg.startswith("error: unknown config key 'lerning_rate'")
    assert "did you mean 'learning_rate'?" in msg
    listed = msg.split("valid keys: ", 1)[1].split(", ")
    assert REQUIRED_KEYS <= set(listed)
    assert not (tmp_path / "w").exists()  # nothing started


def test_unknown_model_is_refused_before_the_workdir_is_made(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "train", "--config", "configs/cpu_small.py:convnxt_atto",
         "--workdir", str(tmp_path / "w")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "config.model='convnxt_atto' is not a registered model" in lines[0]
    assert "convnext_atto" in lines[0]
    assert not (tmp_path / "w").exists()  # nothing started
