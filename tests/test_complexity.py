"""Analytic complexity accounting vs published numbers, the real Flax models and XLA.

References used here are independent of convfirst_jax.complexity: timm's published parameter
counts / GMACs, the real models' parameter trees (built abstractly with nnx.eval_shape) and
XLA's HloCostAnalysis of compiled programs (standalone ops and whole models).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from convfirst_jax import create_model
from convfirst_jax.complexity import (LAYER_KINDS, ComplexityTable, LayerCost, LayerRecorder,
                                      fused_block_bytes, model_complexity, roofline,
                                      valid_taps)
from convfirst_jax.specs import MODEL_SPECS, list_models
from convfirst_jax import summary


def _xla_cost(f, *args) -> dict:
    return jax.jit(f).lower(*args).compile().cost_analysis()


def _n_params(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


# --------------------------------------------------------------------------------------------
# Published numbers. timm's GMACs come from fvcore, which also counts LayerNorm (5/element),
# eval BatchNorm (2/element) and adaptive average pooling (1/element) on top of convs +
# linears: ``table.fvcore_macs`` follows that convention. torchvision's weight metadata
# ("_ops", GFLOPS in their docs, 3 decimals) counts convs + linears only, which is the
# contract's ``table.macs``.

# timm publishes 3,708,400 for ConvNeXt-V2 atto, which differs from V1 atto only by GRN
# (gamma + beta, 2 x 4C per block) in place of the layer scale (C per block).
_V2_ATTO_PARAMS = 3_708_400
_ATTO_V1_PARAMS = _V2_ATTO_PARAMS - sum(
    d * (2 * 4 * c - c) for d, c in zip((2, 2, 6, 2), (40, 80, 160, 320)))

TIMM = {  # name: (params, GMACs at 224 as published, 2 decimals)
    "convnext_atto": (_ATTO_V1_PARAMS, 0.55),
    "convnext_tiny": (28_589_128, 4.47),
    "resnet18": (11_689_512, 1.82),
    "resnet50": (25_557_032, 4.11),
}
TORCHVISION = {  # name: (num_params, _ops at 224, 3 decimals)
    "convnext_tiny": (28_589_128, 4.456),
    "convnext_small": (50_223_688, 8.684),
    "convnext_base": (88_591_464, 15.355),
    "resnet18": (11_689_512, 1.814),
    "resnet50": (25_557_032, 4.089),
}


@pytest.mark.parametrize("name", sorted(TIMM))
def test_params_and_gmacs_match_timm(name):
    params, gmacs = TIMM[name]
    t = model_complexity(name, resolution=224)
    assert t.params == params
    assert t.fvcore_macs / 1e9 == pytest.approx(gmacs, abs=0.005 + 1e-9)


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_params_and_macs_match_torchvision(name):
    params, gmacs = TORCHVISION[name]
    t = model_complexity(name, resolution=224)
    assert t.params == params
    assert t.macs / 1e9 == pytest.approx(gmacs, abs=0.0005 + 1e-9)
    assert t.macs < t.fvcore_macs


def test_atto_v1_params_rounds_to_timm_card():
    # timm's model card for convnext_atto lists 3.7 M params.
    assert round(_ATTO_V1_PARAMS / 1e6, 1) == 3.7


@pytest.mark.parametrize("size", ["atto", "femto", "pico", "nano", "tiny"])
def test_convfirst_gmacs_at_most_convnext_of_same_name(size):
    cf = model_complexity(f"convfirst_{size}")
    cn = model_complexity(f"convnext_{size}")
    assert cf.macs <= cn.macs


# --------------------------------------------------------------------------------------------
# Analytic params vs the real Flax models (abstract init: no weights are allocated).

@pytest.fixture(scope="module")
def abstract_models():
    # Speed only: while tracing the init, flax probes ``tracer.sharding`` on every RNG-count
    # update, and jax builds the (unused) AttributeError message by walking the whole jaxpr,
    # which makes nnx.eval_shape quadratic in model size (~5x slower for the 36-block models).
    # Blanking that message text changes no traced value; without the private hook (another
    # jax version) the fixture is just slower.
    from jax._src.interpreters import partial_eval as pe

    with pytest.MonkeyPatch.context() as mp:
        if hasattr(getattr(pe, "DynamicJaxprTracer", None), "_origin_msg"):
            mp.setattr(pe.DynamicJaxprTracer, "_origin_msg", lambda self: "")
        return {name: nnx.eval_shape(lambda name=name: create_model(name))
                for name in list_models()}


def _module_at(model, path: str):
    obj = model
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def test_params_equal_real_model_for_every_model(abstract_models):
    for name, model in abstract_models.items():
        table = model_complexity(name)
        assert table.params == _n_params(nnx.state(model, nnx.Param)), name
        # every layer with parameters names a module (or Param) of the real model holding
        # exactly that many parameters
        for layer in table.layers:
            if layer.params:
                obj = _module_at(model, layer.name)
                n = (_n_params(obj) if isinstance(obj, nnx.Variable)
                     else _n_params(nnx.state(obj, nnx.Param)))
                assert n == layer.params, (name, layer.name)


# --------------------------------------------------------------------------------------------
# Totals vs XLA's cost analysis of the real model's eval-mode forward at 64 px.
#
# Like with like: XLA's HloCostAnalysis charges a convolution 2 flops per multiply-add but only
# for kernel taps that read real input (taps on the zero padding are skipped), so our side uses
# count_padding=False; XLA reports exp / rsqrt / tanh / erf's exp in a separate
# "transcendentals" count, which our flops also exclude (kept in .transcendentals).

@pytest.mark.parametrize("name", ["convnext_atto", "convfirst_atto", "resnet18"])
def test_totals_match_xla_cost_analysis(name):
    xla = summary.xla_cost_analysis(name, resolution=64, batch_size=2)
    ours = model_complexity(name, resolution=64, batch_size=2, count_padding=False)
    assert ours.flops == pytest.approx(xla["flops"], rel=0.05)
    assert ours.transcendentals == pytest.approx(xla["transcendentals"], rel=0.05)
    # the every-tap convention only adds padding taps
    assert model_complexity(name, resolution=64, batch_size=2).flops >= ours.flops


# --------------------------------------------------------------------------------------------
# Per-layer checks by hand and per-op counts vs XLA on tiny standalone ops.

def test_depthwise_layer_by_hand():
    # convnext_tiny stage 2 runs at 224 / 16 = 14 px with C = 384, 7x7 depthwise + bias.
    t = model_complexity("convnext_tiny", resolution=224, batch_size=2, dtype_bytes=2)
    (dw,) = [l for l in t.layers if l.name == "stages.2.blocks.3.conv_dw"]
    assert dw.kind == "depthwise" and dw.block == "stages.2.blocks.3"
    assert dw.in_shape == dw.out_shape == (14, 14, 384)
    assert (dw.kernel_size, dw.stride, dw.groups, dw.padding) == (7, 1, 384, 3)
    macs = 2 * 14 * 14 * 384 * 7 * 7
    assert dw.macs == macs
    assert dw.flops == 2 * macs + 2 * 14 * 14 * 384  # + bias add
    assert dw.params == 7 * 7 * 384 + 384
    assert dw.act_bytes_read == dw.act_bytes_written == 2 * 14 * 14 * 384 * 2
    assert dw.weight_bytes == (7 * 7 * 384 + 384) * 2
    assert dw.intensity == pytest.approx(dw.flops / (2 * dw.act_bytes_read + dw.weight_bytes))


def test_pointwise_layer_by_hand():
    t = model_complexity("convfirst_atto_gw8", resolution=128, batch_size=3)
    layers = {l.name: l for l in t.layers}
    fc1 = layers["stages.1.blocks.0.fc1"]  # 128 / 8 = 16 px, C = 64 -> 256, no bias (BN)
    assert fc1.kind == "pointwise"
    assert fc1.in_shape == (16, 16, 64) and fc1.out_shape == (16, 16, 256)
    assert fc1.macs == 3 * 16 * 16 * 64 * 256
    assert fc1.flops == 2 * fc1.macs
    assert fc1.params == 64 * 256
    assert fc1.act_bytes_read == 3 * 16 * 16 * 64 * 4
    assert fc1.act_bytes_written == 3 * 16 * 16 * 256 * 4
    conv = layers["stages.1.blocks.0.conv_dw"]
    assert conv.kind == "grouped" and conv.groups == 64 // 8
    assert conv.macs == 3 * 16 * 16 * 64 * 3 * 3 * 8
    assert layers["stages.1.downsample.conv"].kind == "full_conv"
    assert layers["head.fc"].kind == "linear" and layers["head.fc"].block is None


def test_valid_taps_by_hand():
    # 8 outputs of a 3-tap window with padding 1: the two border outputs lose one tap each.
    assert valid_taps(8, 3, 1, 1) == 22
    assert valid_taps(2, 7, 1, 3) == 4        # both outputs see both inputs
    assert valid_taps(16, 4, 4, 0) == 16      # patchify: no padding, every tap valid
    # 7 px, 3x3/2, pad 1 -> 4 outputs; the first reads pixel -1, the last pixel 7 (padding)
    assert valid_taps(7, 3, 2, 1) == 4 * 3 - 2


def _one_layer(method, *args, batch=2, count_padding=False, **kw):
    rec = LayerRecorder(batch, 4, count_padding)
    getattr(rec, method)(*args, **kw)
    (layer,) = rec.layers
    return layer


def _standalone_modules(c: int, rngs: nnx.Rngs) -> dict:
    return {
        "ln": nnx.LayerNorm(c, epsilon=1e-6, use_fast_variance=False, rngs=rngs),
        "bn": nnx.BatchNorm(c, use_running_average=True, use_fast_variance=False, rngs=rngs),
        "dw": nnx.Conv(c, c, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=c,
                       rngs=rngs),
        "full": nnx.Conv(c, 16, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                         use_bias=False, rngs=rngs),
        "fc": nnx.Linear(c, 40, rngs=rngs),
    }


def test_per_op_flops_match_xla_standalone():
    """Each per-op count of complexity.costs against XLA on a small standalone op.

    Parameters enter the jitted function as arguments, as in the real model (closed-over
    constants would let XLA fold the ones/zeros of a fresh norm away). Window and matmul ops
    must match exactly. Element-wise counts are a convention calibrated on XLA: how XLA fuses
    a reduction changes its count a little with the shape (LayerNorm measured 7 to 9.25
    flops/element over shapes on jax 0.10.2), so norms and activations get 10 %.
    """
    n, h, c = 2, 9, 24
    x = jax.ShapeDtypeStruct((n, h, h, c), jnp.float32)
    modules = nnx.eval_shape(lambda: _standalone_modules(c, nnx.Rngs(0)))
    exact = [  # (function of (module or None, x), our LayerCost)
        (lambda m, a: m(a), "dw", _one_layer("conv", "dw", None, (h, h, c), c, kernel_size=7,
                                              padding=3, groups=c, bias=True)),
        (lambda m, a: m(a), "full", _one_layer("conv", "full", None, (h, h, c), 16,
                                                kernel_size=3, stride=2, padding=1)),
        (lambda m, a: m(a), "fc", _one_layer("dense", "fc", None, (h, h, c), 40)),
        (lambda m, a: nnx.max_pool(a, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))), None,
         _one_layer("max_pool", "mp", None, (h, h, c), kernel_size=3, stride=2, padding=1)),
        (lambda m, a: a.mean(axis=(1, 2)), None,
         _one_layer("global_avg_pool", "gap", None, (h, h, c))),
        (lambda m, a: a + a[::-1], None, _one_layer("add", "add", None, (h, h, c))),
    ]
    shape = (h, h, c)
    approx = [
        (lambda m, a: m(a), "ln", _one_layer("norm", "ln", None, shape, "layernorm")),
        (lambda m, a: m(a), "bn", _one_layer("norm", "bn", None, shape, "batchnorm")),
        (lambda m, a: jax.nn.relu(a), None, _one_layer("activation", "relu", None, shape, "relu")),
        (lambda m, a: jax.nn.silu(a), None, _one_layer("activation", "silu", None, shape, "silu")),
        (lambda m, a: jax.nn.gelu(a, approximate=False), None,
         _one_layer("activation", "gelu", None, shape, "gelu")),
        (lambda m, a: jax.nn.gelu(a, approximate=True), None,
         _one_layer("activation", "gelu_tanh", None, shape, "gelu_tanh")),
    ]

    def xla(fn, key):
        if key is None:
            return _xla_cost(lambda a: fn(None, a), x)
        graphdef, state = nnx.split(modules[key])
        return _xla_cost(lambda st, a: fn(nnx.merge(graphdef, st), a), state, x)

    # One compile for all the exact ops (independent outputs of one program: XLA's count is
    # the sum of the per-op counts).
    graphdef, state = nnx.split(modules)

    def exact_ops(st, a):
        mods = nnx.merge(graphdef, st)
        return [fn(mods[key] if key else None, a) for fn, key, _ in exact]

    cost = _xla_cost(exact_ops, state, x)
    ours = [(layer.name, layer.flops) for _, _, layer in exact]
    assert sum(f for _, f in ours) == cost["flops"], ours
    assert cost.get("transcendentals", 0.0) == 0
    for fn, key, layer in approx:
        cost = xla(fn, key)
        assert layer.flops == pytest.approx(cost.get("flops", 0.0), rel=0.1), layer.name
        assert layer.transcendentals == cost.get("transcendentals", 0.0), layer.name


# --------------------------------------------------------------------------------------------
# Table structure, fused-block floor.

def test_table_structure():
    t = model_complexity("convnext_atto", resolution=64)
    assert isinstance(t, ComplexityTable)
    assert all(l.kind in LAYER_KINDS for l in t.layers)
    spec = MODEL_SPECS["convnext_atto"]
    assert len(t.blocks) == sum(spec.depths)
    for name, layers in t.blocks.items():
        assert [l.kind for l in layers] == ["depthwise", "norm", "pointwise", "activation",
                                            "pointwise", "scale", "add"], name
    assert t.total.macs == sum(l.macs for l in t.layers) == t.macs
    assert t.total.bytes == sum(l.bytes_total for l in t.layers)
    rows = t.to_rows()
    assert len(rows) == len(t.layers) and rows[0]["name"] == "stem.conv"
    assert rows[0]["in_shape"] == "64x64x3"
    json.dumps(rows)
    md = t.to_markdown()
    assert md.count("\n") == len(t.layers) + 2 and "| total |" in md
    # batch scales everything but the weights
    t2 = model_complexity("convnext_atto", resolution=64, batch_size=2)
    assert t2.macs == 2 * t.macs and t2.params == t.params
    assert t2.total.weight_bytes == t.total.weight_bytes
    r = model_complexity("resnet50", resolution=64)
    assert [l.name for l in r.blocks["layers.1.0"]][:2] == ["layers.1.0.downsample.conv",
                                                            "layers.1.0.downsample.bn"]


def test_fused_block_bytes():
    t = model_complexity("convnext_tiny", resolution=224, batch_size=4, dtype_bytes=2)
    layers = t.blocks["stages.1.blocks.2"]  # 28 x 28 x 192
    c, e = 192, 768
    params = 49 * c + c + 2 * c + c * e + e + e * c + c + c  # conv, LN, fc1, fc2, gamma
    expect = 2 * 4 * 28 * 28 * c * 2 + params * 2
    assert fused_block_bytes(layers, batch=4, dtype_bytes=2) == expect
    cfg = MODEL_SPECS["convnext_tiny"].block_config(1)
    assert fused_block_bytes(cfg, 28, 28, batch=4, dtype_bytes=2) == expect
    assert expect < sum(l.bytes_total for l in layers)  # the hidden 4C never hits memory
    with pytest.raises(ValueError, match="needs H and W"):
        fused_block_bytes(cfg)
    with pytest.raises(ValueError, match="ONE conv-first block"):
        fused_block_bytes(t.layers[:3])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="valid names"):
        model_complexity("convnext_huge")
    with pytest.raises(ValueError, match="resolution"):
        model_complexity("resnet18", resolution=16)
    with pytest.raises(ValueError, match="batch_size"):
        model_complexity("resnet18", batch_size=0)


# --------------------------------------------------------------------------------------------
# CLI.

def test_cli_prints_table_and_totals(capsys):
    assert summary.main(["convfirst_atto", "--resolution", "64"]) == 0
    out = capsys.readouterr().out
    t = model_complexity("convfirst_atto", resolution=64)
    assert "stages.3.blocks.1.fc2" in out and f"{t.params:,}" in out and f"{t.macs:,}" in out
    summary.main(["resnet18", "--resolution", "64", "--format", "json", "--dtype", "bfloat16"])
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["macs"] == model_complexity("resnet18", 64).macs
    assert data["dtype_bytes"] == 2
    assert len(data["layers"]) == len(model_complexity("resnet18").layers)
    summary.main(["convnext_atto", "--format", "csv"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("name,kind,block") and lines[-1].startswith("total,")
    summary.main(["--all", "--markdown"])
    out = capsys.readouterr().out
    assert all(f"`{name}`" in out for name in list_models())
    assert ("| `convnext_tiny` | convnext | 7x7 dw, LN, gelu | 3-3-9-3 | 96-192-384-768 | 28.59 "
            "| 4.46 | 4.47 |") in out


def test_cli_bad_model_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "convfirst_jax.summary", "convnext_huge"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown model 'convnext_huge'" in proc.stderr and "convnext_tiny" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_update_readme(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nintro\n<!-- model-table:start -->\nold table\n"
                      "<!-- model-table:end -->\n\nafter\n")
    assert summary.main(["--update-readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nintro\n")
    assert text.endswith("<!-- model-table:end -->\n\nafter\n")
    assert "| `resnet50` | resnet | bottleneck |" in text
    summary.main(["--update-readme", str(readme)])  # idempotent
    assert readme.read_text() == text
    assert "unchanged" in capsys.readouterr().out
    bare = tmp_path / "BARE.md"
    bare.write_text("# no markers\n")
    with pytest.raises(SystemExit) as exc:
        summary.main(["--update-readme", str(bare)])
    assert exc.value.code == 2
    assert "model-table:start" in capsys.readouterr().err
    assert bare.read_text() == "# no markers\n"


def test_cli_check_xla(capsys):
    assert summary.main(["resnet18", "--resolution", "32", "--check-xla"]) == 0
    out = capsys.readouterr().out
    assert "XLA flops" in out and "ours / XLA = " in out
    ratio = float(out.split("ours / XLA = ")[1].split(")")[0])
    assert abs(ratio - 1) < 0.05


# --------------------------------------------------------------------------------------------
# Roofline (Lavin 2024, Sec. 2) on hand-computed layer costs.
PEAK = 100e12  # 100 TFLOP/s
BW = 2e12      # 2 TB/s -> ridge at 50 FLOP/byte


def _cost(name, kind, flops, read, written, weights=0, macs=0) -> LayerCost:
    """A LayerCost with only the fields the roofline reads."""
    return LayerCost(name=name, kind=kind, block="b", in_shape=(1, 1, 1), out_shape=(1, 1, 1),
                     kernel_size=1, stride=1, groups=1, macs=macs, flops=flops, params=0,
                     act_bytes_read=read, act_bytes_written=written, weight_bytes=weights)


def _matmul_layer(m=4096, k=4096, n=4096, dtype_bytes=2) -> LayerCost:
    """A (m,k)@(k,n) matmul: 2mkn flops; reads m*k + k*n, writes m*n elements."""
    return _cost("mm", "pointwise", 2 * m * k * n, m * k * dtype_bytes, m * n * dtype_bytes,
                 k * n * dtype_bytes, macs=m * k * n)


def _depthwise_layer(n=32, h=56, w=56, c=96, k=7, dtype_bytes=2) -> LayerCost:
    """A k x k depthwise conv: 2 k^2 flops per output element, ~1 element read + written."""
    elems = n * h * w * c
    return _cost("dw", "depthwise", 2 * k * k * elems, elems * dtype_bytes, elems * dtype_bytes,
                 k * k * c * dtype_bytes, macs=k * k * elems)


def test_matmul_layer_is_compute_bound_and_waterline_is_ops_over_peak():
    mm = _matmul_layer()
    flops = 2 * 4096 ** 3                        # 137.4 GFLOP
    nbytes = 3 * 4096 * 4096 * 2                 # 100.7 MB
    assert mm.bytes_total == nbytes
    assert mm.intensity == pytest.approx(flops / nbytes)  # ~1365 FLOP/B >> ridge 50
    ideal = flops / PEAK                          # 1.374 ms
    assert roofline.ideal_latency(flops, PEAK) == pytest.approx(ideal)
    assert roofline.kernel_floor(flops, nbytes, PEAK, BW) == pytest.approx(ideal)
    assert roofline.layer_floor(mm, PEAK, BW) == pytest.approx(ideal)
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
        _cost("conv", "depthwise", 2 * 49 * x, x * b, x * b, (49 * c + c) * b, macs=49 * x),
        _cost("norm", "norm", 8 * x, x * b, x * b, 2 * c * b),
        _cost("fc1", "pointwise", 2 * x * e * c, x * b, hid * b, (c * e * c + e * c) * b,
              macs=x * e * c),
        _cost("act", "activation", 64 * hid, hid * b, hid * b),
        _cost("fc2", "pointwise", 2 * x * e * c, hid * b, x * b, (c * e * c + c) * b,
              macs=x * e * c),
        _cost("scale", "scale", x, x * b, x * b, c * b),
        _cost("add", "add", x, 2 * x * b, x * b),
    ], x * b, x


def test_fused_block_floor_is_two_macs_and_x_weights_out_bytes():
    layers, x_bytes, x = _block_layers()
    weights = sum(l.weight_bytes for l in layers)
    macs = (49 + 2 * 4 * 96) * x
    assert roofline.fused_block_bytes_moved(layers) == 2 * x_bytes + weights
    fused = roofline.fused_block_floor(layers, PEAK, BW)
    assert fused == pytest.approx(max(2 * macs / PEAK, (2 * x_bytes + weights) / BW))
    # This block is memory bound unfused (hidden E*C activations go to DRAM 4 times) but
    # compute bound fused, and its element-wise work (64 flops per gelu) hides under the
    # matmuls: the fused floor is 2 * MACs / peak.
    assert fused == pytest.approx(2 * macs / PEAK)
    unfused = roofline.waterline(layers, PEAK, BW)
    assert unfused > 1.5 * fused
    # A given byte count (e.g. the BN-folded weight set) replaces x + out + layer weights.
    slow_bw = 1e9
    assert roofline.fused_block_floor(layers, PEAK, slow_bw, nbytes=123_456) == pytest.approx(
        max(2 * macs / PEAK, 123_456 / slow_bw))


def test_roofline_rejects_bad_input():
    with pytest.raises(ValueError, match="peak"):
        roofline.ideal_latency(1.0, 0.0)
    with pytest.raises(ValueError, match="latency_s"):
        roofline.efficiency(1.0, 0.0, PEAK)
    with pytest.raises(ValueError, match="bandwidth"):
        roofline.kernel_floor(1.0, 1.0, PEAK, -1.0)
    with pytest.raises(ValueError, match="empty"):
        roofline.fused_block_floor([], PEAK, BW)
