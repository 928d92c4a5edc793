"""train.report: markdown + PNG plots + FLOPs-to-target ratios from two fake run directories."""

from __future__ import annotations

import json
import pathlib

import pytest
from PIL import Image

from train import report


def _fake_run(root: pathlib.Path, name: str, model: str, macs: float, latency: float,
              curve: list[tuple[float, float]], targets: dict) -> pathlib.Path:
    d = root / name
    d.mkdir(parents=True)
    summary = {
        "model": model, "image_size": 64, "params": 2_000_000 if "conv" in model else 11_000_000,
        "macs_per_image": macs, "train_images_per_s": 300.0,
        "eval_latency_ms_per_batch": latency, "eval_batch_size": 128,
        "final": {"top1": curve[-1][1]}, "best_top1": max(t for _, t in curve),
        "train_flops_xla": curve[-1][0], "train_flops_ratio_xla_over_analytic": 1.1,
        "devices": 1, "device_kind": "cpu",
        "history": [{"step": 100 * (i + 1), "train_flops": f, "top1": t}
                    for i, (f, t) in enumerate(curve)],
        "targets": targets, "config": {"model": model},
    }
    (d / "summary.json").write_text(json.dumps(summary))
    return d


@pytest.fixture()
def two_runs(tmp_path):
    base = _fake_run(tmp_path / "runs", "resnet18_cpu", "resnet18", 150e6, 40.0,
                     [(1e13, 0.3), (2e13, 0.55), (4e13, 0.72)],
                     {"0.5": {"train_flops": 2e13, "step": 200}, "0.7": {"train_flops": 4e13,
                                                                           "step": 300},
                      "0.8": None})
    fast = _fake_run(tmp_path / "runs", "convfirst_atto_cpu", "convfirst_atto", 45e6, 12.0,
                     [(2e12, 0.4), (5e12, 0.62), (1e13, 0.81)],
                     {"0.5": {"train_flops": 5e12, "step": 200}, "0.7": {"train_flops": 1e13,
                                                                           "step": 300},
                      "0.8": {"train_flops": 1e13, "step": 300}})
    (tmp_path / "runs" / "unfinished").mkdir()
    return [base, fast, tmp_path / "runs" / "unfinished"]


def test_report_files_and_ratios(two_runs, tmp_path):
    out = tmp_path / "reports" / "demo"
    rc = report.main([*map(str, two_runs), "--out", str(out)])
    assert rc == 0
    for name in ("report.md", "report.json", "top1_vs_gmacs.png", "top1_vs_latency.png",
                 "learning_curves.png", "flops_to_target.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
    rep = json.loads((out / "report.json").read_text())
    assert rep["baseline"] == "resnet18_cpu"  # found by model name
    # Hand-computed: 5e12 / 2e13 and 1e13 / 4e13; the baseline never reached 80%.
    assert rep["ratios"]["convfirst_atto_cpu"]["0.5"] == pytest.approx(0.25)
    assert rep["ratios"]["convfirst_atto_cpu"]["0.7"] == pytest.approx(0.25)
    assert rep["ratios"]["convfirst_atto_cpu"]["0.8"] is None
    assert rep["ratios"]["resnet18_cpu"]["0.7"] == pytest.approx(1.0)
    md = (out / "report.md").read_text()
    assert "| resnet18_cpu (baseline) | resnet18 |" in md
    assert "0.005 (0.25x)" in md and "not reached" in md  # PFLOPs to 50%: 5e12 = 0.005 PFLOPs
    assert md.index("convfirst_atto_cpu |") < md.index("resnet18_cpu (baseline)")  # by GMACs
    assert "![flops_to_target](flops_to_target.png)" in md


def test_report_without_baseline_or_runs(two_runs, tmp_path):
    paths = report.write_report(two_runs[1:2], tmp_path / "solo", baseline="resnet18")
    assert paths["flops_to_target"].is_file()
    assert "(x base)" not in paths["markdown"].read_text()
    with pytest.raises(ValueError, match="no summary.json found"):
        report.write_report([two_runs[2]], tmp_path / "none")
