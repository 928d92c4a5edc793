"""BatchNorm folding (convfirst_jax.folding) equals eval mode; per-block kernel params.

Models carry random-but-nontrivial BN running statistics and affine parameters
(tests/model_fill.py random_model), so every folded term matters.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convfirst_jax import apply_folded, fold_batchnorm, get_spec
from convfirst_jax.models import ConvFirstBlock
from convfirst_jax.models.norms import fold_bn
from convfirst_jax.specs import ConvFirstBlockConfig
from model_fill import abstract_model, random_fill, random_model
from pallas_kernels import conv_first_block_reference

RTOL = 1e-5
TINY_GW8 = dataclasses.replace(get_spec("convfirst_atto_gw8"), name="tiny_gw8",
                               depths=(1, 1, 1, 1), dims=(16, 16, 32, 32))


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.fixture(scope="module")
def x32():
    return jax.random.normal(jax.random.key(7), (2, 32, 32, 3), jnp.float32)


def test_folded_model_equals_eval_mode(x32):
    model = random_model("convfirst_atto", num_classes=10, seed=11)
    model.eval()
    want = nnx.jit(lambda m, v: m(v))(model, x32)
    folded = fold_batchnorm(model)
    got = jax.jit(apply_folded)(folded, x32)
    assert got.dtype == jnp.float32 and got.shape == (2, 10)
    assert _rel_err(got, want) < RTOL
    # no BatchNorm left anywhere: blocks are affine-identity, stem/downsample/head plain convs
    blk = folded.params["stages"][2]["blocks"][0]
    np.testing.assert_array_equal(blk["norm_scale"], 1.0)
    np.testing.assert_array_equal(blk["norm_shift"], 0.0)
    assert set(folded.params["stem"]) == {"w", "b"}


def test_folding_uses_running_stats_in_train_mode(x32):
    model = random_model("convfirst_atto", num_classes=10, seed=11)
    model.train()  # folding must still use the running statistics
    folded = fold_batchnorm(model)
    model.eval()
    ref = fold_batchnorm(model)
    for a, b in zip(jax.tree.leaves(folded), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cfg", [
    ConvFirstBlockConfig(channels=16, kernel_size=3, group_width=1),
    ConvFirstBlockConfig(channels=16, kernel_size=5, group_width=8, activation="relu",
                         layer_scale_init=0.5),
    ConvFirstBlockConfig(channels=16, kernel_size=7, norm="layernorm", activation="gelu",
                         layer_scale_init=1e-6, conv_bias=True, mlp_bias=True,
                         norm_eps=1e-6),
], ids=["bn_dw3", "bn_gw8_k5_ls", "ln_convnext"])
def test_block_kernel_params_equal_block(cfg):
    blk = random_fill(nnx.eval_shape(lambda: ConvFirstBlock(cfg, rngs=nnx.Rngs(0))), seed=2)
    blk.eval()
    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 16))
    want = nnx.jit(lambda b, v: b(v))(blk, x)
    params = blk.kernel_params()
    assert params["conv_w"].shape == (cfg.kernel_size, cfg.kernel_size, cfg.group_width, 16)
    assert params["w1"].shape == (16, 64) and params["w2"].shape == (64, 16)
    assert (params["layer_scale"] is None) == (cfg.layer_scale_init is None)
    got = conv_first_block_reference(x, params, **cfg.kernel_options())
    assert _rel_err(got, want) < RTOL


def test_fold_bn_is_the_eval_affine():
    cfg = ConvFirstBlockConfig(channels=16)
    blk = random_fill(nnx.eval_shape(lambda: ConvFirstBlock(cfg, rngs=nnx.Rngs(0))), seed=5)
    bn = blk.fc1_norm
    bn.eval()
    y = jax.random.normal(jax.random.key(4), (3, 64)) * 2.0 + 1.0
    s, t = fold_bn(bn)
    mean, var = np.asarray(bn.mean[...]), np.asarray(bn.var[...])
    ref = (np.asarray(y) - mean) / np.sqrt(var + 1e-5) * np.asarray(bn.scale[...]) \
        + np.asarray(bn.bias[...])
    np.testing.assert_allclose(y * s + t, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn(y), ref, rtol=1e-5, atol=1e-6)


def test_fold_batchnorm_rejects_convnext():
    with pytest.raises(ValueError, match="expects a ConvFirstNet"):
        fold_batchnorm(abstract_model("convnext_atto"))


def test_apply_folded_validates(x32):
    folded = fold_batchnorm(random_model(TINY_GW8, num_classes=4))
    with pytest.raises(ValueError, match="block_impl"):
        apply_folded(folded, x32, block_impl="cuda")
    with pytest.raises(ValueError, match=r"expected NHWC"):
        apply_folded(folded, x32[0])
