"""Latency-lab analysis: efficiency / gap / waterline math on hand-computed cases, timing,
ceilings table, writers and figures (no model compiles here)."""

from __future__ import annotations

import csv
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from convfirst_jax.analysis import ceilings, plots, results, roofline, timing
from convfirst_jax.analysis.roofline import OpCost

PEAK = 100e12  # 100 TFLOP/s
BW = 2e12      # 2 TB/s -> ridge at 50 FLOP/byte


def _matmul_layer(m=4096, k=4096, n=4096, dtype_bytes=2) -> OpCost:
    """A (m,k)@(k,n) matmul: 2mkn flops; reads m*k + k*n, writes m*n elements."""
    return OpCost(name="mm", kind="pointwise", flops=2 * m * k * n,
                  act_bytes_read=m * k * dtype_bytes, act_bytes_written=m * n * dtype_bytes,
                  weight_bytes=k * n * dtype_bytes, macs=m * k * n)


def _depthwise_layer(n=32, h=56, w=56, c=96, k=7, dtype_bytes=2) -> OpCost:
    """A k x k depthwise conv: 2 k^2 flops per output element, ~1 element read + written."""
    elems = n * h * w * c
    return OpCost(name="dw", kind="depthwise", flops=2 * k * k * elems,
                  act_bytes_read=elems * dtype_bytes, act_bytes_written=elems * dtype_bytes,
                  weight_bytes=k * k * c * dtype_bytes, macs=k * k * elems)


def test_matmul_layer_is_compute_bound_and_waterline_is_ops_over_peak():
    mm = _matmul_layer()
    flops = 2 * 4096 ** 3                        # 137.4 GFLOP
    nbytes = 3 * 4096 * 4096 * 2                 # 100.7 MB
    assert mm.bytes_total == nbytes
    assert mm.intensity == pytest.approx(flops / nbytes)  # ~1365 FLOP/B >> ridge 50
    ideal = flops / PEAK                          # 1.374 ms
    assert roofline.ideal_latency(flops, PEAK) == pytest.approx(ideal)
    assert roofline.kernel_floor(flops, nbytes, PEAK, BW) == pytest.approx(ideal)
    assert roofline.waterline([mm], PEAK, BW) == pytest.approx(ideal)
    assert roofline.bound(flops, nbytes, PEAK, BW) == "compute"
    latency = 2e-3                                # measured 2 ms
    assert roofline.efficiency(flops, latency, PEAK) == pytest.approx(0.68719476736)
    assert roofline.efficiency_gap(flops, latency, PEAK) == pytest.approx(latency - ideal)
    assert roofline.efficiency_gap(flops, ideal, PEAK) == pytest.approx(0.0, abs=1e-15)


def test_depthwise_layer_is_memory_bound_and_waterline_is_bytes_over_bandwidth():
    dw = _depthwise_layer()
    elems = 32 * 56 * 56 * 96
    nbytes = 2 * elems * 2 + 49 * 96 * 2
    assert dw.bytes_total == nbytes
    assert dw.intensity < PEAK / BW               # 24.5 FLOP/B < ridge 50
    floor = nbytes / BW                           # ~19.3 us
    assert roofline.kernel_floor(dw.flops, nbytes, PEAK, BW) == pytest.approx(floor)
    assert roofline.waterline([dw], PEAK, BW) == pytest.approx(floor)
    assert roofline.bound(dw.flops, nbytes, PEAK, BW) == "memory"
    # Its ideal (ops/peak) is well under the floor: efficiency alone cannot reach 100 %.
    assert roofline.ideal_latency(dw.flops, PEAK) < floor / 1.9


def test_waterline_sums_per_kernel_floors():
    layers = [_depthwise_layer(), _matmul_layer(), _depthwise_layer(c=48)]
    per = roofline.waterline_per_layer(layers, PEAK, BW)
    assert per == pytest.approx([max(l.flops / PEAK, l.bytes_total / BW) for l in layers])
    assert roofline.waterline(layers, PEAK, BW) == pytest.approx(sum(per))


def _block_layers(n=8, hw=56, c=96, e=4, b=2):
    """Unfused conv-first block by hand: dw conv, LN, fc1, gelu, fc2, scale, add."""
    x = n * hw * hw * c
    hid = x * e
    return [
        OpCost("conv", "depthwise", 2 * 49 * x, x * b, x * b, (49 * c + c) * b),
        OpCost("norm", "norm", 8 * x, x * b, x * b, 2 * c * b),
        OpCost("fc1", "pointwise", 2 * x * e * c, x * b, hid * b, (c * e * c + e * c) * b),
        OpCost("act", "activation", 8 * hid, hid * b, hid * b),
        OpCost("fc2", "pointwise", 2 * x * e * c, hid * b, x * b, (c * e * c + c) * b),
        OpCost("scale", "scale", x, x * b, x * b, c * b),
        OpCost("add", "add", x, 2 * x * b, x * b),
    ], x * b


def test_fused_block_floor_counts_x_weights_out_only_and_is_below_unfused():
    layers, x_bytes = _block_layers()
    weights = sum(l.weight_bytes for l in layers)
    flops = sum(l.flops for l in layers)
    fused = roofline.fused_block_floor(layers, PEAK, BW)
    assert fused == pytest.approx(max(flops / PEAK, (2 * x_bytes + weights) / BW))
    assert fused == pytest.approx(roofline.fused_floor(flops, x_bytes, weights, x_bytes,
                                                       PEAK, BW))
    unfused = roofline.waterline(layers, PEAK, BW)
    assert fused < unfused
    # This block is memory bound unfused (hidden E*C activations go to DRAM 4 times) but
    # compute bound fused: the fused floor is ops/peak.
    assert fused == pytest.approx(flops / PEAK)
    assert unfused > 1.5 * fused


def test_roofline_rejects_bad_input():
    with pytest.raises(ValueError, match="peak"):
        roofline.ideal_latency(1.0, 0.0)
    with pytest.raises(ValueError, match="latency_s"):
        roofline.efficiency(1.0, 0.0, PEAK)
    with pytest.raises(ValueError, match="bandwidth"):
        roofline.kernel_floor(1.0, 1.0, PEAK, -1.0)
    with pytest.raises(ValueError, match="empty"):
        roofline.fused_block_floor([], PEAK, BW)


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


def test_time_callable_calibrates_calls_per_sample():
    t = timing.time_callable(lambda i: time.sleep(0.001), sync=lambda _: None, warmup=0,
                             repeats=2, min_sample_s=0.02, max_number=50)
    assert 5 <= t.number <= 20


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
