"""Floating dtypes by name: the one table every model, lab and training command reads.

``COMPUTE_DTYPES`` maps the names the command lines accept to jnp dtypes (f32 and the two
16-bit tensor-core types); :func:`resolve_dtype` also takes dtype objects and the common
short spellings (:data:`DTYPE_ALIASES`). ``itemsize`` gives bytes per element for the
memory-traffic accounting (``jnp.dtype(name).itemsize``).
"""

from __future__ import annotations

import jax.numpy as jnp

#: Compute dtypes a model, block benchmark or training run can be asked for by name.
COMPUTE_DTYPES: dict[str, jnp.dtype] = {
    "float32": jnp.dtype(jnp.float32),
    "bfloat16": jnp.dtype(jnp.bfloat16),
    "float16": jnp.dtype(jnp.float16),
}
DTYPE_NAMES: tuple[str, ...] = tuple(COMPUTE_DTYPES)

#: Short spellings accepted by :func:`resolve_dtype` (case-insensitive), beside numpy names.
DTYPE_ALIASES: dict[str, str] = {
    "f32": "float32", "fp32": "float32", "float": "float32", "single": "float32",
    "bf16": "bfloat16",
    "f16": "float16", "fp16": "float16", "half": "float16",
    "f64": "float64", "fp64": "float64", "double": "float64",
}


def resolve_dtype(dtype, label: str = "dtype") -> jnp.dtype:
    """A floating dtype from a dtype object or a name ("float32", "bfloat16", "bf16", "fp16",
    ... see :data:`DTYPE_ALIASES`); anything else raises one ValueError naming the choices."""
    if isinstance(dtype, str):
        dtype = DTYPE_ALIASES.get(dtype.strip().lower(), dtype.strip().lower())
    try:
        resolved = jnp.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or not jnp.issubdtype(resolved, jnp.floating):
        names = sorted({*DTYPE_NAMES, "float64", *DTYPE_ALIASES})
        raise ValueError(f"{label} must be a floating dtype, got {dtype!r}; use a jnp dtype "
                         f"or one of {', '.join(names)}")
    return resolved


def itemsize(name: str) -> int:
    """Bytes per element of a compute dtype named in :data:`COMPUTE_DTYPES`."""
    try:
        return COMPUTE_DTYPES[name].itemsize
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPE_NAMES)}") from None
