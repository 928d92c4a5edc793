"""Small building blocks shared by every model: initialisers, drop path, input checks.

Initialisers follow timm: ``trunc_normal(std=.02)`` for ConvNeXt/ConvFirst convs and linears,
Kaiming-normal (fan_out) for ResNet convs, zero biases (Liu et al. 2022, Sec. 2; He et al. 2015).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array

def _host_drawn(jax_init: Callable, draw: Callable[[np.random.Generator, tuple], np.ndarray]):
    """An initializer that draws on the host with numpy when the key is concrete.

    Eager ``jax.random`` initialisers compile one XLA program per distinct parameter shape
    (about 0.25 s each on a CPU: ~15 s for a small ConvNeXt); a numpy draw seeded from the
    key's bits costs nothing and is just as deterministic. Under a trace (``nnx.eval_shape``,
    ``nnx.jit``) the key is abstract, so the jax initialiser is used instead.
    """
    def init(key, shape, dtype=jnp.float32):
        key_bits = jax.random.key_data(key)
        if isinstance(key_bits, jax.core.Tracer):   # inside a trace: stay in jax
            return jax_init(key, shape, dtype)
        bits = np.asarray(key_bits).astype(np.uint64).ravel()
        rng = np.random.default_rng([int(b) for b in bits])
        return jnp.asarray(draw(rng, tuple(int(s) for s in shape)), dtype=dtype)
    return init


def _trunc_normal_draw(stddev: float):
    def draw(rng: np.random.Generator, shape: tuple) -> np.ndarray:
        z = rng.standard_normal(shape)
        bad = np.abs(z) > 2.0
        while bad.any():                       # resample outside +-2 std (truncated normal)
            z[bad] = rng.standard_normal(int(bad.sum()))
            bad = np.abs(z) > 2.0
        return z * stddev
    return draw


def _kaiming_fan_out_draw(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    fan_out = shape[-1] * int(np.prod(shape[:-2])) if len(shape) > 2 else shape[-1]
    return rng.standard_normal(shape) * np.sqrt(2.0 / fan_out)


#: timm's ``trunc_normal_(std=.02)`` (truncated at +-2 std, which timm's absolute +-2 never hits).
TRUNC_NORMAL_02 = _host_drawn(nnx.initializers.truncated_normal(stddev=0.02),
                              _trunc_normal_draw(0.02))
#: timm ResNet: ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``.
KAIMING_FAN_OUT = _host_drawn(nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
                              _kaiming_fan_out_draw)


class DropPath(nnx.Module):
    """Stochastic depth (Huang et al. 2016), per sample, as timm's ``drop_path``.

    Instead of masking a tensor it returns the per-sample branch multiplier
    ``keep_mask / keep_prob`` of shape (N,), or ``None`` when inactive (eval mode or rate 0),
    so the same draw can scale an XLA branch or be handed to the fused kernel as
    ``branch_scale``. ``model.train()`` / ``model.eval()`` toggle ``deterministic``.
    """

    def __init__(self, rate: float, *, rngs: nnx.Rngs, deterministic: bool = False):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.deterministic = deterministic
        # Always fork, so the parameter init stream never depends on the drop path rate.
        self.rngs = rngs["dropout"].fork()

    def __call__(self, batch: int) -> Array | None:
        if self.deterministic or self.rate == 0.0:
            return None
        keep_prob = 1.0 - self.rate
        # Draw like ``RngStream.__call__`` but update the counter with ``set_value`` (see
        # BatchNorm: ``count[...] += 1`` makes tracing quadratic in depth on flax 0.12).
        stream = self.rngs
        key = jax.random.fold_in(stream.key[...], stream.count[...])
        stream.count.set_value(stream.count[...] + 1)
        keep = jax.random.bernoulli(key, keep_prob, (batch,))
        return keep.astype(jnp.float32) / keep_prob

    def set_view(self, deterministic: bool | None = None):
        """Used by ``nnx.view``: ``deterministic=True`` disables the drop."""
        if deterministic is not None:
            self.deterministic = deterministic


def scale_branch(z: Array, scale: Array | None) -> Array:
    """Multiply an NHWC branch by the per-sample drop path multiplier (no-op for ``None``)."""
    if scale is None:
        return z
    return z * scale.astype(z.dtype)[:, None, None, None]


def drop_path_rates(rate: float, depths: tuple[int, ...]) -> list[list[float]]:
    """timm's linearly increasing stochastic depth: ``linspace(0, rate, sum(depths))`` per stage."""
    total = sum(depths)
    flat = [rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    out, start = [], 0
    for d in depths:
        out.append(flat[start:start + d])
        start += d
    return out


def check_image_input(x, *, min_resolution: int, model_name: str) -> None:
    """Raise one ValueError unless ``x`` is an (N, H, W, 3) floating NHWC batch of H, W >= min."""
    shape = tuple(getattr(x, "shape", ()))
    dtype = getattr(x, "dtype", None)
    floating = dtype is not None and jnp.issubdtype(dtype, jnp.floating)
    if len(shape) != 4 or shape[-1] != 3 or not floating:
        hint = ""
        if len(shape) == 4 and shape[1] == 3 and shape[-1] != 3:
            hint = "; transpose NCHW with x.transpose(0, 2, 3, 1)"
        elif len(shape) == 3:
            hint = "; add a batch axis with x[None]"
        elif not floating and len(shape) == 4:
            hint = "; convert with x.astype(jnp.float32) (and normalise)"
        raise ValueError(
            f"{model_name}: expected NHWC (N, H, W, 3) floating input, got shape {shape} "
            f"{dtype}{hint}")
    h, w = shape[1], shape[2]
    if h < min_resolution or w < min_resolution:
        raise ValueError(
            f"{model_name}: input resolution {h}x{w} is too small; the network downsamples "
            f"by 32, so H and W must be >= {min_resolution}")
