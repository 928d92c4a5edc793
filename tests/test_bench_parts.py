"""Latency-lab parts: timing, the ceilings table, results writers and figures (no model
compiles here; the roofline math is tested in test_complexity.py)."""

from __future__ import annotations

import csv
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from convfirst_jax.bench import ceilings, plots, results, timing

PEAK = 100e12  # 100 TFLOP/s
BW = 2e12      # 2 TB/s -> ridge at 50 FLOP/byte


# ----------------------------------------------------------------------------- timing
def test_time_jax_excludes_compile_and_reports_median_and_spread():
    trace_sleep = 0.4

    def slow_to_compile(x):
        time.sleep(trace_sleep)  # runs at trace time only: part of compile, never of a call
        return x * 2.0 + 1.0

    xs = [(jnp.full((256,), float(i)),) for i in range(3)]
    t = timing.time_jax(slow_to_compile, xs, warmup=2, repeats=9)
    assert t.compile_s >= trace_sleep
    assert len(t.samples_s) == 9 and t.buffers == 3 and t.number == 1
    assert max(t.samples_s) < trace_sleep / 4
    s = np.asarray(t.samples_s)
    assert t.median_s == pytest.approx(np.median(s))
    assert t.p10_s == pytest.approx(np.percentile(s, 10))
    assert t.p90_s == pytest.approx(np.percentile(s, 90))
    assert t.p10_s <= t.median_s <= t.p90_s
    assert t.iqr_s == pytest.approx(np.percentile(s, 75) - np.percentile(s, 25))
    d = t.summary()
    assert d["samples_s"] == list(t.samples_s) and d["compile_s"] == t.compile_s


def test_time_callable_measures_known_latency_and_rotates_buffers():
    seen = []

    def call(i):
        seen.append(i)
        time.sleep(0.01)
        return i

    t = timing.time_callable(call, sync=lambda _: None, buffers=3, warmup=1, repeats=5)
    assert 0.0095 <= t.median_s < 0.05
    assert set(seen) == {0, 1, 2}
    assert seen[:6] == [0, 1, 2, 0, 1, 2]


def test_time_callable_calibrates_calls_per_sample(monkeypatch):
    """On a fake clock every call takes exactly 2^-10 s (binary-exact, so no rounding in the
    ceil): 20 calls make the 20 * 2^-10 s minimum sample. A real sleep is not used, because
    under load the calibration call can take several times its nominal length."""
    import types

    step = 2.0 ** -10
    now = [0.0]

    def call(i):
        now[0] += step

    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    t = timing.time_callable(call, sync=lambda _: None, warmup=0, repeats=2,
                             min_sample_s=20 * step, max_number=50)
    assert t.number == 20 and t.samples_s == (step, step)
    capped = timing.time_callable(call, sync=lambda _: None, warmup=0, repeats=1,
                                  min_sample_s=80 * step, max_number=50)
    assert capped.number == 50


def test_time_jax_first_output_is_returned_for_cross_checks():
    got = []
    timing.time_jax(lambda x: x + 1.0, [(jnp.ones(4),)], warmup=0, repeats=1,
                    on_first=got.append)
    np.testing.assert_allclose(np.asarray(got[0]), 2.0)


def test_timing_rejects_bad_counts():
    with pytest.raises(ValueError, match="repeats"):
        timing.time_callable(lambda i: i, sync=lambda _: None, repeats=0)
    with pytest.raises(ValueError, match="arg_sets"):
        timing.time_jax(lambda x: x, [])


def test_auto_buffers_exceeds_twice_the_cache():
    assert timing.auto_buffers(1 << 20, 32 << 20) == 16          # capped
    assert timing.auto_buffers(16 << 20, 32 << 20) == 4
    assert timing.auto_buffers(1 << 30, 32 << 20) == 2           # floor of 2


# ----------------------------------------------------------------------------- ceilings
def test_datasheet_lookup_and_peaks():
    h100 = ceilings.lookup_datasheet("NVIDIA H100 80GB HBM3")
    assert h100.name == "NVIDIA H100 SXM" and h100.hbm_bytes_per_s == pytest.approx(3.35e12)
    assert ceilings.lookup_datasheet("NVIDIA H100 PCIe").hbm_bytes_per_s == pytest.approx(2.0e12)
    assert ceilings.lookup_datasheet("NVIDIA H200").hbm_bytes_per_s == pytest.approx(4.8e12)
    a100 = ceilings.lookup_datasheet("NVIDIA A100-SXM4-80GB")
    assert a100.bf16_flops == pytest.approx(312e12) and a100.hbm_bytes_per_s == 2.039e12
    assert ceilings.lookup_datasheet("cpu") is None
    assert ceilings.datasheet_peak(h100, "bfloat16") == pytest.approx(989.4e12)
    assert ceilings.datasheet_peak(h100, "float32") in (h100.tf32_flops, h100.fp32_flops)
    with pytest.raises(ValueError, match="dtype"):
        ceilings.datasheet_peak(h100, "int8")
    c = ceilings.datasheet_ceilings("bfloat16", "NVIDIA H200")
    assert c.source == "datasheet" and c.ridge_intensity == pytest.approx(989.4e12 / 4.8e12)


def test_measure_ceilings_small_on_cpu():
    c = ceilings.measure_ceilings("float32", matmul_n=128, copy_bytes=1 << 20, repeats=3)
    assert c.source == "measured" and c.peak_flops > 1e6 and c.bandwidth > 1e6
    assert c.details["matmul_n"] == 128
    # On CPU "datasheet" falls back to measuring, and says so.
    if jax.default_backend() == "cpu":
        got, note = ceilings.get_ceilings("float32", "datasheet", matmul_n=64,
                                          copy_bytes=1 << 16, repeats=2)
        assert got.source == "measured" and "no datasheet entry" in note


# ----------------------------------------------------------------------------- writers, plots
ENV = {"device_kind": "TestGPU", "platform": "gpu", "jax_version": "0.10.2",
       "jaxlib_version": "0.10.2", "date": "2025-01-02T03:04:05+00:00",
       "command_line": "python -m convfirst_jax.bench test"}
CEIL = {"float32": {"peak_flops": PEAK, "bandwidth": BW, "source": "measured", "details": {}}}


def _rec(name, impl, b, med, suite="models", mode="inference", **kw):
    base = dict(suite=suite, name=name, impl=impl, mode=mode, dtype="float32", batch_size=b,
                resolution=224, kind="model", status="ok", median_s=med, p10_s=0.9 * med,
                p90_s=1.2 * med, ideal_s=0.2 * med, waterline_s=0.5 * med,
                fused_floor_s=0.3 * med, efficiency=0.2, efficiency_gap_s=0.8 * med,
                latency_over_waterline=2.0, images_per_s=b / med, compile_s=1.0,
                macs=int(4e9 * b), samples_s=[med] * 3, series=f"{name}-{impl}")
    base.update(kw)
    return base


def _records():
    recs = []
    for name, scale in (("convfirst_tiny", 1.0), ("convnext_tiny", 1.5), ("resnet50", 2.0)):
        for impl in ("xla", "pallas"):
            for b in (1, 8, 64):
                recs.append(_rec(name, impl, b, scale * 1e-3 * b ** 0.8 *
                                 (0.7 if impl == "pallas" else 1.0)))
    kinds = ["depthwise", "norm", "pointwise", "activation", "pointwise", "scale", "add"]
    for i, k in enumerate(kinds):
        recs.append(_rec(f"stages.0.blocks.0.op{i}", "xla", 8, 1e-5 * (i + 1), suite="layers",
                         kind=k, group="convnext_tiny @224px", bound="memory"))
    recs.append(dict(suite="models", name="convfirst_tiny", impl="pallas", mode="inference",
                     dtype="bfloat16", batch_size=None, status="skipped", note="why not"))
    return recs


def test_writers_produce_json_csv_markdown(tmp_path):
    recs = _records()
    results.write_json(tmp_path / "r.json", {"environment": ENV, "records": recs,
                                             "bad": float("nan")})
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["bad"] is None and len(back["records"]) == len(recs)
    assert back["records"][0]["samples_s"] == recs[0]["samples_s"]
    results.write_csv(tmp_path / "r.csv", recs)
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert len(rows) == len(recs) and rows[0]["name"] == "convfirst_tiny"
    assert float(rows[0]["median_s"]) == pytest.approx(recs[0]["median_s"])
    md = results.markdown_report(ENV, CEIL, recs, title="T", notes=["a note"])
    assert "| convfirst_tiny | pallas |" in md and "TestGPU" in md and "why not" in md
    assert "a note" in md and "100 | 2e+03 | 50 |" in md  # TFLOP/s, GB/s, ridge
    assert results.fmt_time(1.234e-5) == "12.3 µs" and results.fmt_time(0.5) == "500 ms"


@pytest.mark.parametrize("which", ["gap", "waterline", "comparison", "comparison_top1"])
def test_plots_render(tmp_path, which):
    recs = _records()
    path = tmp_path / f"{which}.png"
    if which == "gap":
        out = plots.efficiency_gap_plot(recs, ENV, path)
    elif which == "waterline":
        out = plots.waterline_plot(recs, ENV, path, {"convnext_tiny @224px": "summary"})
    elif which == "comparison":
        out = plots.model_comparison_plot(recs, ENV, path)
    else:
        out = plots.model_comparison_plot(recs, ENV, path, {"convfirst_tiny": 80.1,
                                                            "resnet50": 79.0})
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 400
    assert plots.efficiency_gap_plot([], ENV, tmp_path / "none.png") is None
    assert "TestGPU (gpu) · float32 · jax 0.10.2 · 2025-01-02" == plots.stamp(ENV, ["float32"])
