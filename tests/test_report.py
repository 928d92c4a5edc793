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
                 "top1_vs_train_flops.png", "flops_to_target.png"):
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
    assert "| resnet18_cpu (baseline) | unknown | resnet18 |" in md  # no dataset recorded
    assert "0.005 (0.25x)" in md and "not reached" in md  # PFLOPs to 50%: 5e12 = 0.005 PFLOPs
    assert md.index("convfirst_atto_cpu |") < md.index("resnet18_cpu (baseline)")  # by GMACs
    assert "![flops_to_target](flops_to_target.png)" in md


def test_report_without_baseline_or_runs(two_runs, tmp_path):
    paths = report.write_report(two_runs[1:2], tmp_path / "solo", baseline="resnet18")
    # No baseline: no empty ratio plot, the page says why.
    assert "flops_to_target" not in paths
    assert not (tmp_path / "solo" / "flops_to_target.png").exists()
    md = paths["markdown"].read_text()
    assert "(x base)" not in md and "No FLOPs-to-target plot: no baseline run" in md
    assert md.startswith("# Accuracy-complexity report (1 run, 1 dataset)")
    with pytest.raises(ValueError, match="no summary.json found"):
        report.write_report([two_runs[2]], tmp_path / "none")


def test_analytic_flops_latency_datasets_and_formatting(tmp_path):
    """Training FLOPs = 3 x forward x batch x step; latency.json read; datasets never mixed."""
    root = tmp_path / "runs"
    runs = []
    for name, model, ds, fwd, step50, lat in (
            ("r18", "resnet18", "imagenette", 3e8, 200, {"1": 4.25, "64": 81.333}),
            ("cf", "convfirst_atto", "imagenette", 1e8, 300, {"1": 1.5, "64": 20.0}),
            ("syn", "convfirst_atto", "synthetic", 1e8, 100, None)):
        d = _fake_run(root, name, model, fwd / 2, 10.0, [(1e12, 0.3), (2e12, 0.5555555555)],
                      {"0.5": {"train_flops": 123.0, "step": step50,
                               "wall_time_s": 61.23456}, "0.7": None})
        s = json.loads((d / "summary.json").read_text())
        s.update(dataset=ds, forward_flops_per_image=fwd, batch_size=64, steps=400,
                 jax_version="0.10.2", finished_utc="2026-12-01T20:00:00Z")
        for i, h in enumerate(s["history"]):
            h["step"] = 200 * (i + 1)
        (d / "summary.json").write_text(json.dumps(s))
        if lat:
            (d / "latency.json").write_text(json.dumps({"latency_ms": lat}))
        runs.append(d)
    out = tmp_path / "out"
    paths = report.write_report(runs, out, baseline="resnet18", targets=[0.5, 0.7],
                                command="python -m train.study --data-dir X")
    rep = json.loads(paths["json"].read_text())
    # Hand-computed: cf 3 * 1e8 * 64 * 300 = 5.76e12 vs r18 3 * 3e8 * 64 * 200 = 1.152e13.
    assert rep["ratios"]["cf"]["0.5"] == pytest.approx(0.5)
    assert rep["baselines"] == {"imagenette": "r18", "synthetic": None}
    assert "syn" not in rep["ratios"]  # no baseline of its own dataset
    md = paths["markdown"].read_text()
    assert "## imagenette" in md and "## synthetic" in md and "2 datasets" in md
    assert "| cf | imagenette | convfirst_atto | 64 | 2.00 | 0.050 | 1.50 | 20.0 |" in md
    assert "| cf | 0.00576 (0.50x) | 61 | not reached | - |" in md
    assert "python -m train.study --data-dir X" in md
    import re
    assert not re.search(r"\d\.\d{6,}", md), "unformatted number on the page"
    # One set of plots per dataset, never one plot with both.
    for key in ("top1_vs_gmacs", "top1_vs_latency", "top1_vs_train_flops"):
        assert (out / f"{key}_imagenette.png").is_file()
        assert (out / f"{key}_synthetic.png").is_file()
        assert not (out / f"{key}.png").exists()
    assert (out / "flops_to_target_imagenette.png").is_file()
    assert not (out / "flops_to_target_synthetic.png").exists()
    assert "jax 0.10.2, 2026-12-01" in report.plot_label({"cf": json.loads(
        (runs[1] / "summary.json").read_text())})
