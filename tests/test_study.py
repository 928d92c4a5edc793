"""train.study: bad input, resuming a sweep (finished runs are skipped), the results page."""

from __future__ import annotations

import json

import pytest

from configs import study_cpu_imagenette as study_cfg
from train import study


def _data(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "data" / split / "a").mkdir(parents=True)
    return tmp_path / "data"


def test_bad_input_one_clear_error(tmp_path, capsys):
    assert study.main(["--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "needs train/ and val/" in capsys.readouterr().err
    data = _data(tmp_path)
    assert study.main(["--data-dir", str(data), "--epochs", "0"]) == 2
    assert "--epochs must be > 0" in capsys.readouterr().err
    assert study.main(["--data-dir", str(data), "--set", "num_workers"]) == 2
    assert "--set takes KEY=VALUE" in capsys.readouterr().err


def test_finished_runs_are_skipped_and_the_page_is_written(tmp_path, capsys):
    data, out, res = _data(tmp_path), tmp_path / "out", tmp_path / "res"
    run = out / "resnet18"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "model": "resnet18", "dataset": "data", "image_size": 64, "params": 11e6,
        "macs_per_image": 1.48e8, "forward_flops_per_image": 2.96e8, "batch_size": 64,
        "steps": 10, "final": {"top1": 0.5, "top5": 0.9}, "history": [
            {"step": 10, "top1": 0.5}], "targets": {"0.5": {"step": 10, "wall_time_s": 3.0,
                                                            "train_flops": 1.0}}}))
    (run / "latency.json").write_text(json.dumps({"latency_ms": {"1": 2.0, "64": 50.0}}))
    rc = study.main(["--data-dir", str(data), "--out", str(out), "--results", str(res),
                     "--models", "resnet18"])
    assert rc == 0
    assert "1/1 resnet18: finished earlier, skipped" in capsys.readouterr().out
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["runs"]["resnet18"]["status"] == "finished"
    assert sweep["epochs"] == study_cfg.get_config().num_epochs
    md = (res / "report.md").read_text()
    assert "| resnet18 (baseline) | data | resnet18 | 64 |" in md
    assert "python -m train.study --data-dir" in md
    assert (res / "sweep.json").is_file() and (res / "top1_vs_train_flops.png").is_file()


def test_recipe_is_shared_and_decays():
    cfg = study_cfg.get_config()
    assert cfg.warmup_epochs < cfg.num_epochs  # the cosine decay is reached
    assert study_cfg.STUDY_BASELINE in study_cfg.STUDY_MODELS
    assert set(study_cfg.STUDY_TARGETS) == set(cfg.accuracy_targets)
