"""Fused Pallas kernels for convfirst-jax: the conv-first block (Lavin 2024, "block fusion").

    from pallas_kernels import conv_first_block, conv_first_block_reference

``conv_first_block`` runs one Pallas Triton kernel per block on a GPU (two or three for wide
blocks: :mod:`pallas_kernels.split_block`; the Pallas interpreter elsewhere);
``conv_first_block_reference`` is the same block in plain jnp.
Launch parameters live in :mod:`pallas_kernels.tuning`.
"""

from pallas_kernels.fused_block import block_kernel_count, conv_first_block, fused_forward
from pallas_kernels.options import ACTIVATIONS, NORMS, BlockOptions
from pallas_kernels.reference import conv_first_block_reference
from pallas_kernels.targets import cuda_export_target
from pallas_kernels.tuning import LAUNCH_TABLE, LaunchConfig, launch_config

__all__ = [
    "ACTIVATIONS",
    "BlockOptions",
    "LAUNCH_TABLE",
    "LaunchConfig",
    "NORMS",
    "block_kernel_count",
    "conv_first_block",
    "conv_first_block_reference",
    "cuda_export_target",
    "fused_forward",
    "launch_config",
]
