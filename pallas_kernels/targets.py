"""Lowering the fused kernel for a GPU from a machine without one (``jax.export``).

jax 0.10 lowers the Pallas Triton call without knowing the GPU. jax 0.11 asks for the target
GPU while lowering ("No supported GPU devices found, please specify an abstract GPU device");
:func:`cuda_export_target` names one through an abstract mesh (``jax.sharding.AbstractMesh``
with an ``AbstractDevice``), which both versions accept.

    with cuda_export_target():
        exported = jax.export.export(jax.jit(f), platforms=["cuda"], disabled_checks=...)(x)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
from jax.sharding import AbstractDevice, AbstractMesh

# The GPU the project's static report models (H100 SXM5, 132 SMs).
DEFAULT_DEVICE_KIND = "NVIDIA H100 80GB HBM3"
_AXIS = "cuda_export_target"  # a size-1 axis no kernel maps over


@contextlib.contextmanager
def cuda_export_target(device_kind: str = DEFAULT_DEVICE_KIND,
                       num_cores: int | None = 132) -> Iterator[None]:
    """Context in which ``jax.export(platforms=["cuda"])`` lowers for ``device_kind``.

    An ambient abstract mesh (e.g. from ``jax.set_mesh``) is left alone: give it an
    ``abstract_device`` yourself when exporting under a mesh with jax 0.11.
    """
    if not jax.sharding.get_abstract_mesh().empty:
        yield
        return
    # Auto axis: no explicit-sharding types leak into the traced program
    mesh = AbstractMesh((1,), (_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                        abstract_device=AbstractDevice(device_kind=device_kind,
                                                       num_cores=num_cores, platform="gpu"))
    with jax.sharding.use_abstract_mesh(mesh):
        yield
