"""``create_model``: build any registered architecture (``convfirst_jax.specs.MODEL_SPECS``);
``abstract_model``: the same module as shapes only (``nnx.eval_shape``), for loading weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from convfirst_jax.dtypes import resolve_dtype
from convfirst_jax.models.blocks import check_block_impl
from convfirst_jax.models.macro import FourStageNet
from convfirst_jax.models.resnet import ResNet
from convfirst_jax.specs import FourStageNetSpec, ModelSpec, ResNetSpec, get_spec

def create_model(name: str | ModelSpec, *, num_classes: int = 1000, block_impl: str = "xla",
                 dtype=jnp.float32, param_dtype=jnp.float32, drop_path: float = 0.0,
                 seed: int = 0, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Build a registered model (names: ``convfirst_jax.list_models()``), in train mode.

    Args:
      name: e.g. "convnext_tiny", "convfirst_atto", "convfirst_atto_gw8", "resnet50"; or
        a spec object (``FourStageNetSpec`` / ``ResNetSpec``) for a custom architecture.
      num_classes: width of the classifier.
      block_impl: "xla" (Flax layers) or "pallas" (each conv-first block is one fused
        ``pallas_kernels.conv_first_block``; ConvFirst BN blocks use it in eval mode only).
        ResNets have no conv-first blocks: accepted, no effect.
      dtype: compute dtype (e.g. ``jnp.bfloat16``, or a name: "bfloat16", "bf16", "fp16", ...
        see :data:`convfirst_jax.dtypes.DTYPE_ALIASES`); logits are always float32.
      param_dtype: parameter dtype, same spellings (keep float32 for mixed precision).
      drop_path: maximum stochastic depth rate, linearly increasing over blocks (timm).
      seed: initialisation seed (params and drop path draws), ignored when ``rngs`` is given.
      rngs: an ``nnx.Rngs`` to draw from instead of ``seed`` ("params", "dropout" streams,
        falling back to "default").

    Returns a Flax NNX module; call ``model.eval()`` / ``model.train()`` to switch modes.
    """
    spec = name if isinstance(name, (FourStageNetSpec, ResNetSpec)) else get_spec(name)
    check_block_impl(block_impl)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not 0.0 <= drop_path < 1.0:
        raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
    dtype = resolve_dtype(dtype, "dtype")
    param_dtype = resolve_dtype(param_dtype, "param_dtype")
    if rngs is None:
        # Explicit keys (not ints) so ``seed`` may also be traced, e.g. under nnx.jit.
        rngs = nnx.Rngs(params=jax.random.key(seed),
                        dropout=jax.random.fold_in(jax.random.key(seed), 1))
    kw = dict(num_classes=num_classes, block_impl=block_impl, dtype=dtype,
              param_dtype=param_dtype, drop_path=drop_path, rngs=rngs)
    if isinstance(spec, FourStageNetSpec):
        return FourStageNet(spec, **kw)
    return ResNet(spec, **kw)


class _ConstantRngs:
    """Duck-typed ``nnx.Rngs`` handing out one fixed key, for abstract construction only.

    Every ``nnx.Rngs`` draw increments a counter variable; inside a trace flax 0.12 then
    probes ``tracer.sharding``, whose error message JAX builds by scanning the whole trace,
    so ``nnx.eval_shape`` of a 36-block model is quadratic (~5-15 s). Under ``eval_shape``
    the key values are irrelevant, so this stand-in never mutates anything.
    """

    def __init__(self):
        self._key = jax.random.key(0)

    def __getitem__(self, name: str) -> "_ConstantStream":
        return _ConstantStream(self._key, name)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return _ConstantStream(self._key, name)


class _ConstantStream:
    def __init__(self, key, tag: str):
        self._key, self._tag = key, tag

    def __call__(self):
        return self._key

    def fork(self) -> nnx.RngStream:
        return nnx.RngStream(self._key, tag=self._tag)


def abstract_model(name, **create_kwargs) -> nnx.Module:
    """``create_model`` under ``nnx.eval_shape``: shapes/dtypes only, no compute.

    Same module structure as ``create_model(name, **create_kwargs)`` (RNG key values are
    placeholders); ``rngs``/``seed`` in ``create_kwargs`` are ignored.
    """
    create_kwargs.pop("seed", None)
    create_kwargs.pop("rngs", None)
    rngs = _ConstantRngs()
    return nnx.eval_shape(lambda: create_model(name, rngs=rngs, **create_kwargs))
