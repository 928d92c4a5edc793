"""Models: shapes, timm parameter counts, blocks vs independent plain-jnp references, modes.

References here are written from the papers' equations (Liu et al. 2022 Fig. 4; Lavin 2024
Sec. 3; He et al. 2016) with lax.conv_general_dilated, einsum and hand-written LN/BN; they
share no code with convfirst_jax.models.
"""

import dataclasses
import functools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.scipy.special import erf

from convfirst_jax import create_model, get_spec, list_models
from convfirst_jax.models import ConvFirstBlock
from convfirst_jax.models.layers import drop_path_rates
from convfirst_jax.specs import ConvFirstBlockConfig
from model_fill import abstract_model, random_fill, random_model

HI = lax.Precision.HIGHEST
RTOL = 1e-5

# Tiny four-stage nets (equal widths keep the number of distinct shapes, hence compiles, low).
TINY_CONVNEXT = dataclasses.replace(get_spec("convnext_atto"), name="tiny_convnext",
                                    depths=(1, 1, 2, 1), dims=(8, 16, 16, 24))
TINY_CONVFIRST = dataclasses.replace(get_spec("convfirst_atto"), name="tiny_convfirst",
                                     depths=(1, 1, 1, 1), dims=(8, 8, 8, 8))


def _fwd(model, x):
    return nnx.jit(lambda m, v: m(v))(model, x)


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


def _p(v):
    return jnp.asarray(v[...])


# ----------------------------------------------------------------------------- references
def ref_conv(x, w, stride=1, pad=0, groups=1, b=None):
    y = lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 feature_group_count=groups, precision=HI)
    return y if b is None else y + b


def ref_layernorm(y, g, b, eps):
    mu = y.mean(-1, keepdims=True)
    var = ((y - mu) ** 2).mean(-1, keepdims=True)
    return (y - mu) / jnp.sqrt(var + eps) * g + b


def ref_batchnorm(y, g, b, mean, var, eps=1e-5, train=False):
    if train:
        axes = tuple(range(y.ndim - 1))
        mean = y.mean(axes)
        var = ((y - mean) ** 2).mean(axes)
    return (y - mean) / jnp.sqrt(var + eps) * g + b


def ref_gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def ref_silu(x):
    return x / (1.0 + jnp.exp(-x))


def ref_convnext_block(x, p, eps=1e-6):
    """timm ConvNeXtBlock: dwconv7 -> LN -> fc1 -> GELU -> fc2 -> gamma -> + x."""
    c = x.shape[-1]
    y = ref_conv(x, p["dw_w"], pad=3, groups=c, b=p["dw_b"])
    y = ref_layernorm(y, p["ln_g"], p["ln_b"], eps)
    h = ref_gelu(jnp.einsum("nhwc,cd->nhwd", y, p["w1"], precision=HI) + p["b1"])
    z = jnp.einsum("nhwd,dc->nhwc", h, p["w2"], precision=HI) + p["b2"]
    return x + p["gamma"] * z


def ref_convfirst_block(x, p, k, gw, train=False):
    """Lavin ConvFirst: conv -> BN -> 1x1 -> BN -> SiLU -> 1x1 -> BN -> + x."""
    c = x.shape[-1]
    y = ref_conv(x, p["dw_w"], pad=k // 2, groups=c // gw)
    y = ref_batchnorm(y, *p["bn0"], train=train)
    h = ref_batchnorm(jnp.einsum("nhwc,cd->nhwd", y, p["w1"], precision=HI), *p["bn1"],
                      train=train)
    z = ref_batchnorm(jnp.einsum("nhwd,dc->nhwc", ref_silu(h), p["w2"], precision=HI),
                      *p["bn2"], train=train)
    return x + z


def _bn_params(bn):
    return (_p(bn.scale), _p(bn.bias), _p(bn.mean), _p(bn.var))


def _block_params(blk):
    p = dict(dw_w=_p(blk.conv_dw.kernel), w1=_p(blk.fc1.kernel), w2=_p(blk.fc2.kernel))
    if blk.config.norm == "layernorm":
        p.update(dw_b=_p(blk.conv_dw.bias), ln_g=_p(blk.norm.scale), ln_b=_p(blk.norm.bias),
                 b1=_p(blk.fc1.bias), b2=_p(blk.fc2.bias), gamma=_p(blk.gamma))
    else:
        p.update(bn0=_bn_params(blk.norm), bn1=_bn_params(blk.fc1_norm),
                 bn2=_bn_params(blk.fc2_norm))
    return p


def ref_convnext(x, m):
    """Whole ConvNeXt (Liu et al. 2022 Fig. 2) from the model's parameters."""
    y = ref_conv(x, _p(m.stem.conv.kernel), stride=4, b=_p(m.stem.conv.bias))
    y = ref_layernorm(y, _p(m.stem.norm.scale), _p(m.stem.norm.bias), 1e-6)
    for stage in m.stages:
        if stage.downsample is not None:
            ds = stage.downsample
            y = ref_layernorm(y, _p(ds.norm.scale), _p(ds.norm.bias), 1e-6)
            y = ref_conv(y, _p(ds.conv.kernel), stride=2, b=_p(ds.conv.bias))
        for blk in stage.blocks:
            y = ref_convnext_block(y, _block_params(blk))
    f = ref_layernorm(y.mean((1, 2)), _p(m.head.norm.scale), _p(m.head.norm.bias), 1e-6)
    return f @ _p(m.head.fc.kernel) + _p(m.head.fc.bias)


def ref_resnet(x, m):
    """ResNet v1.5 eval (He et al. 2016; torchvision padding) from the model's parameters."""
    def bn(y, layer):
        return ref_batchnorm(y, *_bn_params(layer))

    y = jax.nn.relu(bn(ref_conv(x, _p(m.conv1.kernel), stride=2, pad=3), m.bn1))
    y = lax.reduce_window(y, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                          ((0, 0), (1, 1), (1, 1), (0, 0)))
    for layer in m.layers:
        for blk in layer:
            stride = blk.conv1.strides[0]
            sc = y if blk.downsample is None else bn(
                ref_conv(y, _p(blk.downsample.conv.kernel), stride=stride), blk.downsample.bn)
            h = jax.nn.relu(bn(ref_conv(y, _p(blk.conv1.kernel), stride=stride, pad=1),
                               blk.bn1))
            h = bn(ref_conv(h, _p(blk.conv2.kernel), pad=1), blk.bn2)
            y = jax.nn.relu(sc + h)
    return y.mean((1, 2)) @ _p(m.fc.kernel) + _p(m.fc.bias)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def x32():
    return jax.random.normal(jax.random.key(42), (2, 32, 32, 3), jnp.float32)


@pytest.fixture(scope="module")
def tiny_convnext():
    m = random_model(TINY_CONVNEXT, num_classes=5, seed=1)
    m.eval()
    return m


# ----------------------------------------------------------------------------- shapes/counts
@functools.lru_cache(maxsize=None)
def _abstract(name):
    return abstract_model(name)


@pytest.mark.parametrize("name", list_models())
def test_output_shape_every_model(name):
    out = nnx.eval_shape(lambda m: m(jnp.zeros((2, 64, 96, 3), jnp.float32)), _abstract(name))
    assert out.shape == (2, 1000) and out.dtype == jnp.float32


@pytest.mark.parametrize("name,expected", [
    # timm convnext_atto (ConvNeXt V1): 3,695,520. (3,708,400 is convnextv2_atto: + GRN
    # gamma/beta 8C per block, - layer scale C per block = +12,880.)
    ("convnext_atto", 3_695_520),
    ("convnext_tiny", 28_589_128),
    ("resnet18", 11_689_512),
    ("resnet50", 25_557_032),
])
def test_param_counts_match_timm(name, expected):
    state = nnx.state(_abstract(name), nnx.Param)
    assert sum(math.prod(v.shape) for v in jax.tree.leaves(state)) == expected


def test_convnext_atto_count_is_analytic():
    """Independent count of the ConvNeXt V1 atto layout (stem, blocks, downsamples, head)."""
    spec = get_spec("convnext_atto")
    d = spec.dims
    total = 4 * 4 * 3 * d[0] + d[0] + 2 * d[0]
    for i, (depth, c) in enumerate(zip(spec.depths, d)):
        if i:
            total += 2 * d[i - 1] + 4 * d[i - 1] * c + c
        total += depth * (49 * c + c + 2 * c + c * 4 * c + 4 * c + 4 * c * c + c + c)
    total += 2 * d[-1] + d[-1] * 1000 + 1000
    assert total == 3_695_520


def test_block_param_shapes_match_timm():
    m = _abstract("convnext_tiny")
    blk = m.stages[2].blocks[3]
    assert blk.conv_dw.kernel.shape == (7, 7, 1, 384) and blk.conv_dw.bias.shape == (384,)
    assert blk.norm.scale.shape == (384,) and blk.norm.bias.shape == (384,)
    assert blk.fc1.kernel.shape == (384, 1536) and blk.fc1.bias.shape == (1536,)
    assert blk.fc2.kernel.shape == (1536, 384) and blk.fc2.bias.shape == (384,)
    assert blk.gamma.shape == (384,)
    gw8 = _abstract("convfirst_atto_gw8").stages[1].blocks[0]
    assert gw8.conv_dw.kernel.shape == (3, 3, 8, 64) and gw8.conv_dw.bias is None
    assert gw8.fc1.bias is None and gw8.gamma is None


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("channels", [16])
def test_convnext_block_matches_reference(channels, x32):
    cfg = ConvFirstBlockConfig(channels=channels, kernel_size=7, norm="layernorm",
                               activation="gelu", layer_scale_init=1e-6, conv_bias=True,
                               mlp_bias=True, norm_eps=1e-6)
    blk = random_fill(nnx.eval_shape(lambda: ConvFirstBlock(cfg, rngs=nnx.Rngs(0))), seed=3)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, channels))
    out = _fwd(blk, x)
    assert _rel_err(out, ref_convnext_block(x, _block_params(blk))) < RTOL


@pytest.mark.parametrize("gw", [1, 8])
@pytest.mark.parametrize("train", [False, True])
def test_convfirst_block_matches_reference(gw, train):
    cfg = ConvFirstBlockConfig(channels=16, kernel_size=3, group_width=gw)
    blk = random_fill(nnx.eval_shape(lambda: ConvFirstBlock(cfg, rngs=nnx.Rngs(0))), seed=4)
    blk.train() if train else blk.eval()
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 16))
    want = ref_convfirst_block(x, _block_params(blk), 3, gw, train=train)
    mean_before = np.asarray(_p(blk.norm.mean))
    out = _fwd(blk, x)
    assert _rel_err(out, want) < RTOL
    y = ref_conv(x, _p(blk.conv_dw.kernel), pad=1, groups=16 // gw)
    mean_after = np.asarray(_p(blk.norm.mean))
    if train:  # running mean moves 10% towards the batch mean (PyTorch momentum 0.1)
        np.testing.assert_allclose(mean_after, 0.9 * mean_before + 0.1 * y.mean((0, 1, 2)),
                                   rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(mean_after, mean_before)


def test_convnext_model_matches_reference(tiny_convnext, x32):
    assert _rel_err(_fwd(tiny_convnext, x32), ref_convnext(x32, tiny_convnext)) < RTOL


def test_resnet18_matches_reference(x32):
    m = random_model("resnet18", num_classes=6, seed=5)
    m.eval()
    assert _rel_err(_fwd(m, x32), ref_resnet(x32, m)) < RTOL


def test_bf16_compute_f32_params(x32):
    m = random_model(TINY_CONVNEXT, num_classes=5, seed=1, dtype=jnp.bfloat16)
    m.eval()
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(m, nnx.Param)))
    out = _fwd(m, x32)
    assert out.dtype == jnp.float32
    assert _rel_err(out, ref_convnext(x32, m)) < 5e-2


# ----------------------------------------------------------------------------- init/modes
def _params(m):
    return jax.tree.leaves(nnx.state(m, nnx.Param))


def test_init_deterministic_in_seed():
    # Eager, as the training loop builds it (an init under jit is one program of ~50 threefry
    # draws, ~10 s of XLA:CPU compile; eagerly each parameter shape's draw compiles once).
    a, b, c = (create_model(TINY_CONVFIRST, num_classes=3, seed=s) for s in (0, 0, 1))
    pa, pb, pc = _params(a), _params(b), _params(c)
    assert all(np.array_equal(u, v) for u, v in zip(pa, pb))
    kernels = [(u, v) for u, v in zip(pa, pc) if u.ndim >= 2]
    assert kernels and not any(np.array_equal(u, v) for u, v in kernels)
    # timm init: trunc-normal(.02) kernels, zero biases; ConvFirst's last BN gamma starts at 0.
    k = np.asarray(_p(a.stages[0].blocks[0].fc1.kernel))
    assert np.abs(k).max() <= 0.04 + 1e-7 and 0.01 < k.std() < 0.03
    assert np.all(np.asarray(_p(a.stages[0].blocks[0].fc2_norm.scale)) == 0)
    assert np.all(np.asarray(_p(a.stages[1].downsample.conv.bias)) == 0)


def test_eval_deterministic_and_drop_path_train_only(x32):
    m = random_model(TINY_CONVNEXT, num_classes=5, seed=1, drop_path=0.9)
    f = nnx.jit(lambda mod, v: mod(v))
    m.eval()
    e1, e2 = f(m, x32), f(m, x32)
    np.testing.assert_array_equal(e1, e2)
    m.train()
    t1, t2 = f(m, x32), f(m, x32)
    assert not np.allclose(t1, t2)  # a fresh per-sample mask every step
    assert not np.allclose(t1, e1) and not np.allclose(t2, e1)
    m.eval()
    np.testing.assert_array_equal(f(m, x32), e1)  # eval unaffected by the train steps


def test_mode_switching_sets_bn_and_drop_path():
    m = abstract_model(TINY_CONVFIRST, drop_path=0.1)
    blk = m.stages[3].blocks[0]
    m.eval()
    assert blk.norm.use_running_average and blk.drop_path.deterministic
    m.train()
    assert not blk.norm.use_running_average and not blk.drop_path.deterministic


def test_drop_path_rates_linear_like_timm():
    m = abstract_model("convnext_atto", drop_path=0.3)
    got = [b.drop_path.rate for s in m.stages for b in s.blocks]
    np.testing.assert_allclose(got, np.linspace(0, 0.3, 12), rtol=1e-12)
    assert [len(r) for r in drop_path_rates(0.3, (2, 3))] == [2, 3]
    assert drop_path_rates(0.3, (1,)) == [[0.0]]


# ----------------------------------------------------------------------------- bad inputs
@pytest.fixture(scope="module")
def abstract_atto():
    return _abstract("convnext_atto")


@pytest.mark.parametrize("x,match", [
    (np.zeros((3, 64, 64), np.float32), r"expected NHWC \(N, H, W, 3\).*\(3, 64, 64\)"),
    (np.zeros((2, 3, 64, 64), np.float32), r"transpose NCHW with x.transpose\(0, 2, 3, 1\)"),
    (np.zeros((2, 64, 64, 3), np.uint8), r"floating input.*uint8"),
    (np.zeros((2, 16, 16, 3), np.float32), r"16x16 is too small.*>= 32"),
])
def test_bad_input_raises(abstract_atto, x, match):
    with pytest.raises(ValueError, match=match):
        abstract_atto(jnp.asarray(x))


def test_bad_input_raises_resnet():
    with pytest.raises(ValueError, match=r"expected NHWC"):
        _abstract("resnet18")(jnp.zeros((2, 64, 64, 1)))


def test_unknown_name_lists_valid():
    with pytest.raises(ValueError, match=r"unknown model 'convnext_huge'.*convfirst_atto"):
        create_model("convnext_huge")


def test_bad_block_impl_lists_valid():
    with pytest.raises(ValueError, match=r"block_impl 'triton'.*'xla', 'pallas'"):
        create_model("convnext_atto", block_impl="triton")


def test_bad_create_args():
    with pytest.raises(ValueError, match="drop_path"):
        create_model("resnet18", drop_path=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet18", num_classes=0)


def test_resnet_accepts_pallas_block_impl(caplog):
    m = abstract_model("resnet18", block_impl="pallas")
    assert m.block_impl == "pallas"
    with caplog.at_level(logging.INFO, logger="convfirst_jax"):
        out = nnx.eval_shape(lambda mod: mod(jnp.zeros((1, 32, 32, 3))), m)
    assert out.shape == (1, 1000) and not caplog.records
