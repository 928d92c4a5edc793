"""Latency-lab CLI and benchmark pieces on CPU: tiny runs of every suite, bad arguments,
the XLA block against an independent numpy block, standalone layer ops, the train step."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from convfirst_jax.bench import blocks as blk
from convfirst_jax.bench import cli
from convfirst_jax.bench import models as mdl
from convfirst_jax.bench.layers import layer_op

FAST = ["--repeats", "2", "--warmup", "0", "--min-sample-ms", "0", "--ceiling-matmul", "128",
        "--ceiling-copy-mib", "2"]
ENV_KEYS = ("jax_version", "device_kind", "platform", "date", "command_line")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny run of each suite (shared by the assertions below)."""
    root = tmp_path_factory.mktemp("bench")
    argv = {
        "blocks": ["blocks", "--channels", "16", "--resolution", "6", "--kernel-size", "3",
                   "--batch-sizes", "1", "2", "--norm", "layernorm", "--activation", "gelu"],
        "models": ["models", "--models", "convfirst_atto", "--resolution", "32",
                   "--batch-sizes", "1", "2", "--dtypes", "float32", "--waterline",
                   "--only", r"stages\.3\.blocks\.1\.conv_dw|head\.fc",
                   "--compare-torch"],
        "layers": ["layers", "--model", "convfirst_atto", "--resolution", "32",
                   "--batch-size", "1", "--dtype", "float32", "--only",
                   r"stages\.3\.blocks\.0\.(conv_dw|fc1|add)",
                   "--block-impls", "xla"],
    }
    out = {}
    for suite, args in argv.items():
        d = root / suite
        assert cli.main([*args, *FAST, "--out", str(d)]) == 0
        out[suite] = d
    return out


def _png_ok(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= 800 and im.size[1] >= 400


@pytest.mark.parametrize("suite", ["blocks", "models", "layers"])
def test_cli_writes_json_csv_markdown(runs, suite):
    d = runs[suite]
    payload = json.loads((d / "results.json").read_text())
    env = payload["environment"]
    assert all(env.get(k) for k in ENV_KEYS) and env["platform"] == jax.default_backend()
    assert f"convfirst_jax.bench {suite}" in env["command_line"]
    (dt, ceil), = payload["ceilings"].items()
    assert dt == "float32" and ceil["peak_flops"] > 0 and ceil["bandwidth"] > 0
    ok = [r for r in payload["records"] if r["status"] == "ok"]
    assert ok
    for r in ok:
        if "samples_s" in r:
            assert len(r["samples_s"]) == 2 and r["median_s"] > 0 and r["compile_s"] > 0
            assert r["p10_s"] <= r["median_s"] <= r["p90_s"]
    rows = list(csv.DictReader((d / "results.csv").open()))
    assert len(rows) == len(payload["records"])
    md = (d / "results.md").read_text()
    assert "Device ceilings" in md and "float32" in md
    for fig in payload["figures"]:
        _png_ok(d / fig)
        assert f"]({fig})" in md


def test_blocks_run(runs):
    payload = json.loads((runs["blocks"] / "results.json").read_text())
    recs = payload["records"]
    main = [r for r in recs if r["suite"] == "blocks"]
    xla = [r for r in main if r["impl"] == "xla"]
    assert [r["batch_size"] for r in xla] == [1, 2] and all(r["status"] == "ok" for r in xla)
    ceil = payload["ceilings"]["float32"]
    weights = 4 * (9 * 16 + 16 + 32 + 16 * 64 + 64 + 64 * 16 + 16 + 16)  # float32 params
    for r in xla:
        x_and_out = 2 * r["batch_size"] * 6 * 6 * 16 * 4
        assert r["fused_floor_s"] == pytest.approx(
            max(2 * r["macs"] / ceil["peak_flops"], (x_and_out + weights) / ceil["bandwidth"]))
        assert r["ideal_s"] <= r["waterline_s"] and r["fused_floor_s"] <= r["waterline_s"]
        assert r["efficiency"] == pytest.approx(r["ideal_s"] / r["median_s"])
        assert r["efficiency_gap_s"] == pytest.approx(r["median_s"] - r["ideal_s"])
        assert r["latency_over_waterline"] == pytest.approx(r["median_s"] / r["waterline_s"])
    ref = [r for r in main if r["impl"] == "reference"]
    assert len(ref) == 2
    for r in ref:  # the kernel's jnp reference (f32 intermediates) vs xla (rounded per layer)
        assert r["status"] == "ok" and r["max_abs_diff_vs_xla"] < 1e-4
    if jax.default_backend() != "gpu":
        pal = [r for r in main if r["impl"] == "pallas"]
        assert pal and all(r["status"] == "skipped" for r in pal)
        md = (runs["blocks"] / "results.md").read_text()
        assert "skipping impl pallas on cpu: the Pallas kernel would run in interpret mode" in md
    layers = [r for r in recs if r["suite"] == "layers" and r["kind"] != "block"]
    assert [r["kind"] for r in layers] == ["depthwise", "norm", "pointwise", "activation",
                                           "pointwise", "scale", "add"]
    (agg,) = [r for r in recs if r["suite"] == "layers" and r["kind"] == "block"]
    assert agg["median_s"] == pytest.approx(sum(r["median_s"] for r in layers))
    assert agg["fused_floor_s"] < agg["waterline_s"]
    assert set(payload["figures"]) == {"efficiency_gap.png", "waterline.png"}


def test_models_run_gives_three_figures(runs):
    payload = json.loads((runs["models"] / "results.json").read_text())
    assert payload["figures"] == ["efficiency_gap.png", "waterline.png", "model_comparison.png"]
    recs = payload["records"]
    fwd = [r for r in recs if r["suite"] == "models" and r["status"] == "ok"]
    assert [(r["impl"], r["batch_size"]) for r in fwd] == [("xla", 1), ("xla", 2)]
    table = mdl.model_table("convfirst_atto", 32, 2, "float32", 1000)
    assert fwd[1]["flops"] == table.flops and fwd[1]["macs"] == table.macs
    assert fwd[1]["fused_floor_s"] < fwd[1]["waterline_s"]
    names = [r["name"] for r in recs if r["suite"] == "layers" and r["kind"] != "block"]
    assert names == ["stages.3.blocks.1.conv_dw", "head.fc"]
    notes = " ".join(payload["notes"])
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except Exception:  # ImportError, or a broken install (CUDA-only torchvision, CPU torch)
        assert "--compare-torch: torch/timm not importable" in notes


def test_layers_run(runs):
    payload = json.loads((runs["layers"] / "results.json").read_text())
    recs = payload["records"]
    lay = [r for r in recs if r["suite"] == "layers" and r["kind"] != "block"]
    assert lay and all(r["name"].startswith("stages.3.blocks.0") for r in lay)
    for r in lay:
        assert r["waterline_s"] == pytest.approx(
            max(r["flops"] / payload["ceilings"]["float32"]["peak_flops"],
                r["bytes"] / payload["ceilings"]["float32"]["bandwidth"]))
        assert r["bound"] in ("memory", "compute")
    whole = [r for r in recs if r["suite"] == "models" and r["status"] == "ok"]
    assert len(whole) == 1 and whole[0]["batch_size"] == 1
    assert "waterline.png" in payload["figures"]


# ----------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("args, message", [
    (["models", "--models", "convnext_huge"], "unknown value 'convnext_huge'"),
    (["blocks", "--impls", "xla,cuda"], "unknown value 'cuda'"),
    (["blocks", "--batch-sizes", "4,0"], "0 is not positive"),
    (["models", "--batch-sizes", "-2"], "is not positive"),
    (["models", "--dtypes", "float64"], "unknown value 'float64'"),
    (["blocks", "--channels", "12"], "multiple of 8"),
    (["blocks", "--kernel-size", "9"], "supports k in 3, 5, 7"),
    (["layers", "--resolution", "16"], "at least 32"),
    (["layers", "--only", "("], "not a valid regular expression"),
])
def test_bad_arguments_exit_2_with_a_clear_message(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "convfirst_jax.bench", "models", "--models",
                        "nope", "--out", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 2
    assert "unknown value 'nope'" in p.stderr and "Traceback" not in p.stderr


def test_channels_not_multiple_of_8_fine_without_pallas(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["blocks", "--channels", "12", "--impls", "xla", "--out", "o"])
    cli.validate(parser, args)
    assert args.channels == [12]


def test_command_line_becomes_typed_options():
    from convfirst_jax.bench.options import BlocksOptions, LayersOptions, ModelsOptions

    b = cli.parse_options(["blocks", "--channels", "16,32", "--impls", "xla", "reference",
                           "--min-sample-ms", "0.5", "--ceiling-copy-mib", "2", "--no-plots",
                           "--dtype", "float32", "--out", "o"])
    assert isinstance(b, BlocksOptions) and b.channels == (16, 32)
    assert b.impls == ("xla", "reference") and b.dtypes == ("float32",)
    assert b.run.timing.min_sample_s == pytest.approx(5e-4) and not b.run.plots
    assert b.run.ceilings.copy_bytes == 2 << 20 and str(b.run.out) == "o"
    m = cli.parse_options(["models", "--models", "resnet18", "--dtypes", "bfloat16",
                           "--training-summary", "a.json", "b.json", "--out", "o"])
    assert isinstance(m, ModelsOptions) and m.models == ("resnet18",)
    assert m.training_summaries == ("a.json", "b.json") and m.dtypes == ("bfloat16",)
    lay = cli.parse_options(["layers", "--dtype", "float32", "--batch-size", "3", "--out", "o"])
    assert isinstance(lay, LayersOptions) and lay.dtypes == ("float32",)
    whole = lay.whole_models()
    assert whole.batch_sizes == (3,) and whole.models == lay.models and not whole.waterline


# ----------------------------------------------------------------------------- pieces
def _numpy_block(x, p, k, gw, norm, act, eps=1e-6):
    """Independent float64 numpy conv-first block (explicit loops over taps and groups)."""
    x = np.asarray(x, np.float64)
    p = {n: np.asarray(v, np.float64) for n, v in p.items()}
    n, h, w, c = x.shape
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    y = np.zeros_like(x)
    for co in range(c):
        g0 = (co // gw) * gw  # input channels of this output channel's group
        for i in range(k):
            for j in range(k):
                y[..., co] += np.einsum("nhwc,c->nhw", xp[:, i:i + h, j:j + w, g0:g0 + gw],
                                        p["conv_w"][i, j, :, co])
    y += p["conv_b"]
    if norm == "layernorm":
        mu = y.mean(-1, keepdims=True)
        y = (y - mu) / np.sqrt(((y - mu) ** 2).mean(-1, keepdims=True) + eps)
    y = y * p["norm_scale"] + p["norm_shift"]
    hdn = y @ p["w1"] + p["b1"]
    if act == "silu":
        hdn = hdn / (1 + np.exp(-hdn))
    else:  # exact gelu
        from math import erf
        hdn = 0.5 * hdn * (1 + np.vectorize(erf)(hdn / np.sqrt(2)))
    z = (hdn @ p["w2"] + p["b2"]) * p.get("layer_scale", 1.0)
    return x + z


@pytest.mark.parametrize("norm, act, gw, ls", [("layernorm", "gelu", 1, True),
                                               ("affine", "silu", 8, False)])
def test_xla_block_matches_numpy(norm, act, gw, ls):
    case = blk.BlockCase(channels=16, resolution=5, kernel_size=3, expansion=2, group_width=gw,
                         norm=norm, activation=act, layer_scale=ls)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 5, 5, 16), np.float32))
    p = blk.make_block_params(rng, case)
    got = jax.jit(lambda x, p: blk.xla_block(x, p, **case.kernel_kwargs()))(x, p)
    want = _numpy_block(x, p, 3, gw, norm, act)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)


def test_block_layer_costs_by_hand():
    case = blk.BlockCase(channels=16, resolution=6, kernel_size=3, expansion=4, dtype="bfloat16")
    layers = blk.block_layer_costs(case, 2)
    assert [l.kind for l in layers] == ["depthwise", "norm", "pointwise", "activation",
                                        "pointwise", "scale", "add"]
    x = 2 * 6 * 6 * 16
    assert layers[0].macs == x * 9 and layers[2].macs == x * 64 and layers[4].macs == x * 64
    assert layers[0].act_bytes_read == 2 * x and layers[-1].act_bytes_written == 2 * x
    assert layers[3].act_bytes_read == 2 * 4 * x
    weights = sum(l.weight_bytes for l in layers)
    assert weights == 2 * (9 * 16 + 16 + 32 + 16 * 64 + 64 + 64 * 16 + 16 + 16)


@pytest.mark.parametrize("name", ["convfirst_atto", "convnext_atto", "resnet18"])
def test_layer_ops_rebuild_every_layer_with_its_shapes(name):
    table = mdl.model_table(name, 64, 2, "float32", 10)
    rng = np.random.default_rng(0)
    for layer in table.layers:
        fn, make = layer_op(layer, 2, "float32")
        args = make(rng)
        assert all(np.isfinite(np.asarray(a)).all() and np.asarray(a).std() > 0 for a in args)
        out = jax.eval_shape(fn, *args)
        assert out.shape == (2, *layer.out_shape), layer.name
        n_weights = sum(int(np.prod(a.shape)) for a in args[1:])
        if layer.kind in ("full_conv", "pointwise", "grouped", "depthwise", "linear", "scale"):
            assert n_weights == layer.params, layer.name
        assert int(np.prod(args[0].shape)) * 4 <= layer.act_bytes_read, layer.name


def test_model_floors():
    from convfirst_jax.bench.ceilings import Ceilings

    ceil = Ceilings("x", "gpu", "bfloat16", 500e12, 2e12, "datasheet")
    t = mdl.model_table("convnext_atto", 224, 32, "bfloat16", 1000)
    unfused, fused = mdl.model_floors(t, ceil)
    assert fused < unfused
    assert unfused == pytest.approx(sum(max(l.flops / 500e12, l.bytes_total / 2e12)
                                        for l in t.layers))
    _, none = mdl.model_floors(mdl.model_table("resnet18", 224, 1, "float32", 1000), ceil)
    assert none is None


def test_train_step_learns_and_updates_batch_stats():
    from flax import nnx

    class Tiny(nnx.Module):
        """Linear classifier on centred pooled features, with a running mean (a BatchStat)."""

        def __init__(self):
            rng = np.random.default_rng(0)
            self.w = nnx.Param(jnp.asarray(0.5 * rng.standard_normal((3, 4)), jnp.float32))
            self.mean = nnx.BatchStat(jnp.asarray(np.zeros(3, np.float32)))

        def __call__(self, x):
            f = x.mean((1, 2))
            self.mean[...] = 0.9 * self.mean[...] + 0.1 * f.mean(0)
            return (f - self.mean[...]) @ self.w

    step, (params, rest, opt) = mdl.train_step_fn(Tiny(), learning_rate=0.1, weight_decay=0.0)
    step = jax.jit(step)
    rng = np.random.default_rng(1)
    y = np.arange(8) % 4
    x = rng.standard_normal((8, 2, 2, 3)).astype(np.float32) + np.eye(4, 3)[y][:, None, None]
    x, y = jnp.asarray(x), jnp.asarray(y)
    losses = []
    for _ in range(8):
        params, rest, opt, loss = step(params, rest, opt, x, y)
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]
    assert np.abs(np.asarray(rest["mean"][...])).max() > 0.01  # updated from zeros


def test_read_training_summaries(tmp_path):
    """Summaries as ``python -m train`` writes them: "model" and "best_top1" (a fraction)."""
    runs = {"a": {"model": "convfirst_atto", "best_top1": 0.615, "final": {"top1": 0.6}},
            "b": {"model": "resnet18", "best_top1": 0.55, "final": {"top1": 0.55}},
            "b2": {"model": "resnet18", "best_top1": 0.5, "final": {"top1": 0.5}},
            "e": {"model": "convnext_atto", "best_top1": None, "final": {"top1": None}}}
    for name, summary in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "summary.json").write_text("{not json")
    notes = []
    got = cli.read_training_summaries([str(tmp_path / "*" / "summary.json")], notes)
    assert got == {"convfirst_atto": pytest.approx(61.5), "resnet18": pytest.approx(55.0)}
    assert len(notes) == 2 and "unreadable" in notes[0] and "best_top1" in notes[1]


def test_timm_name_mapping():
    from convfirst_jax.bench.torch_compare import timm_name

    assert timm_name("convfirst_tiny_gw8") == "convnext_tiny"
    assert timm_name("convnext_atto") == "convnext_atto"
    assert timm_name("resnet50") == "resnet50"


def test_pallas_impl_plumbing_traces():
    """The lab's pallas callable matches the kernel's signature (abstract trace, no lowering)."""
    case = blk.BlockCase(channels=16, resolution=5, kernel_size=3, expansion=2)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 5, 5, 16), np.float32))
    p = blk.make_block_params(rng, case)
    for impl in ("pallas", "reference"):
        out = jax.eval_shape(blk.block_impl_fn(impl, case), x, p)
        assert out.shape == x.shape and out.dtype == x.dtype
