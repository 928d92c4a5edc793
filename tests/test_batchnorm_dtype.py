"""BatchNorm running statistics follow PyTorch; create_model's dtype spellings.

References are hand computations in numpy (PyTorch's documented BatchNorm2d update:
running_mean = (1 - 0.1) * running_mean + 0.1 * mean, running_var likewise with the *unbiased*
batch variance; the output uses the biased one).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convfirst_jax import create_model
from convfirst_jax.models.norms import BatchNorm


@pytest.mark.parametrize("shape", [(2, 1, 1, 3), (2, 3, 4, 5), (1, 2, 2, 3)])
def test_batchnorm_train_step_matches_pytorch_semantics(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, shape).astype(np.float32)
    c = shape[-1]
    bn = BatchNorm(c, epsilon=1e-5, momentum=0.9, use_fast_variance=False, rngs=nnx.Rngs(0))
    bn.scale[...] = jnp.asarray(rng.normal(size=c), jnp.float32)
    bn.bias[...] = jnp.asarray(rng.normal(size=c), jnp.float32)
    y = np.asarray(bn(jnp.asarray(x)))

    flat = x.reshape(-1, c).astype(np.float64)
    n = flat.shape[0]
    mean = flat.sum(0) / n
    biased = ((flat - mean) ** 2).sum(0) / n
    unbiased = ((flat - mean) ** 2).sum(0) / (n - 1)
    ref_y = (flat - mean) / np.sqrt(biased + 1e-5) * np.asarray(bn.scale[...]) \
        + np.asarray(bn.bias[...])
    np.testing.assert_allclose(y.reshape(-1, c), ref_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.mean[...]), 0.1 * mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.var[...]), 0.9 * 1.0 + 0.1 * unbiased, rtol=1e-6)
    if n == 2:  # the head BN of ConvFirstNet at batch 2: twice the biased variance
        np.testing.assert_allclose(unbiased, 2 * biased)

    bn.eval()  # eval mode normalises with the running statistics
    y_eval = np.asarray(bn(jnp.asarray(x)))
    ref_eval = (flat - 0.1 * mean) / np.sqrt(0.9 + 0.1 * unbiased + 1e-5) \
        * np.asarray(bn.scale[...]) + np.asarray(bn.bias[...])
    np.testing.assert_allclose(y_eval.reshape(-1, c), ref_eval, rtol=1e-5, atol=1e-5)


def test_batchnorm_single_value_per_channel_keeps_running_var_finite():
    bn = BatchNorm(2, epsilon=1e-5, momentum=0.9, use_fast_variance=False, rngs=nnx.Rngs(0))
    bn(jnp.ones((1, 1, 1, 2)))
    assert np.isfinite(np.asarray(bn.var[...])).all()


@pytest.mark.parametrize("alias,expected", [("bf16", jnp.bfloat16), ("BFloat16", jnp.bfloat16),
                                            ("fp32", jnp.float32), ("float32", jnp.float32),
                                            ("fp16", jnp.float16), ("half", jnp.float16)])
def test_create_model_accepts_dtype_aliases(alias, expected):
    model = create_model("resnet18", num_classes=3, dtype=alias, param_dtype="f32")
    assert model.conv1.dtype == jnp.dtype(expected)
    assert model.conv1.kernel[...].dtype == jnp.float32


@pytest.mark.parametrize("bad", ["bogus", "int8", jnp.int32])
def test_create_model_bad_dtype_is_a_value_error(bad):
    with pytest.raises(ValueError, match="must be a floating dtype.*bf16"):
        create_model("resnet18", num_classes=3, dtype=bad)
    with pytest.raises(ValueError, match="param_dtype must be a floating dtype"):
        create_model("resnet18", num_classes=3, param_dtype=bad)
