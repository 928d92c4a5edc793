"""Typed options of a latency-lab run: one frozen dataclass per suite, built by the CLI.

``cli.parse_options(argv)`` turns the command line into one of :class:`BlocksOptions`,
:class:`ModelsOptions` or :class:`LayersOptions`; the runner functions take that object, so
a run can also be started from Python without argparse. Every suite shares a
:class:`RunOptions` (output directory, timing, ceilings, plots).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, ClassVar, Sequence, Union

from convfirst_jax.bench.ceilings import cache_bytes
from convfirst_jax.bench.timing import Timing, auto_buffers, time_jax
from convfirst_jax.models.blocks import BLOCK_IMPLS

#: Block implementations the lab times: the model's two plus the kernel's plain-jnp reference.
LAB_BLOCK_IMPLS = BLOCK_IMPLS + ("reference",)


@dataclasses.dataclass(frozen=True)
class TimingOptions:
    """How every measurement of a run is taken (CLI: --warmup, --repeats, ...)."""

    warmup: int = 5
    repeats: int = 30
    min_sample_s: float = 2e-3
    max_number: int = 100
    buffers: int = 0  # 0 = auto (enough to exceed twice the last-level cache, 2..16)
    seed: int = 0

    def n_buffers(self, bytes_per_set: int) -> int:
        if self.buffers > 0:
            return self.buffers
        return auto_buffers(bytes_per_set, cache_bytes())

    def time(self, fn: Callable, arg_sets: Sequence[tuple],
             on_first: Callable[[Any], Any] | None = None) -> Timing:
        return time_jax(fn, arg_sets, warmup=self.warmup, repeats=self.repeats,
                        min_sample_s=self.min_sample_s, max_number=self.max_number,
                        on_first=on_first)


@dataclasses.dataclass(frozen=True)
class CeilingOptions:
    """How the device ceilings are obtained (CLI: --ceilings, --ceiling-matmul, ...).

    ``matmul_n`` / ``copy_bytes``: None = the defaults of ``ceilings.measure_ceilings``.
    """

    mode: str = "measured"
    matmul_n: int | None = None
    copy_bytes: int | None = None
    repeats: int = 10

    def measure_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"repeats": self.repeats}
        if self.matmul_n:
            kw["matmul_n"] = self.matmul_n
        if self.copy_bytes:
            kw["copy_bytes"] = self.copy_bytes
        return kw


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What every suite shares: where results go, how to time, ceilings, figures."""

    out: pathlib.Path
    timing: TimingOptions = TimingOptions()
    ceilings: CeilingOptions = CeilingOptions()
    plots: bool = True


@dataclasses.dataclass(frozen=True)
class BlocksOptions:
    """Suite "blocks": one conv-first block over a grid of shapes, impls and batch sizes."""

    suite: ClassVar[str] = "blocks"
    run: RunOptions
    dtypes: tuple[str, ...]
    channels: tuple[int, ...] = (96,)
    resolutions: tuple[int, ...] = (56,)
    kernel_sizes: tuple[int, ...] = (7,)
    expansions: tuple[int, ...] = (4,)
    batch_sizes: tuple[int, ...] = (1, 8, 32, 128)
    norms: tuple[str, ...] = ("layernorm",)
    activations: tuple[str, ...] = ("gelu",)
    group_width: int = 1
    layer_scale: bool = True
    impls: tuple[str, ...] = LAB_BLOCK_IMPLS
    layer_breakdown: bool = True


@dataclasses.dataclass(frozen=True)
class ModelsOptions:
    """Suite "models": whole models, inference (and a train step), per impl/dtype/batch."""

    suite: ClassVar[str] = "models"
    run: RunOptions
    dtypes: tuple[str, ...]
    models: tuple[str, ...] = ("convfirst_tiny", "convnext_tiny", "resnet50")
    resolution: int = 224
    batch_sizes: tuple[int, ...] = (1, 16, 64, 256)
    block_impls: tuple[str, ...] = BLOCK_IMPLS
    train_step: bool = False
    waterline: bool = False
    waterline_batch: int | None = None
    only: str | None = None
    compare_torch: bool = False
    training_summaries: tuple[str, ...] = ()
    num_classes: int = 1000


@dataclasses.dataclass(frozen=True)
class LayersOptions:
    """Suite "layers": every layer of a model timed standalone, and the whole model."""

    suite: ClassVar[str] = "layers"
    run: RunOptions
    dtype: str
    models: tuple[str, ...] = ("convnext_tiny",)
    resolution: int = 224
    batch_size: int = 32
    block_impls: tuple[str, ...] = BLOCK_IMPLS
    only: str | None = None
    num_classes: int = 1000

    @property
    def dtypes(self) -> tuple[str, ...]:
        return (self.dtype,)

    def whole_models(self) -> ModelsOptions:
        """The whole-model reference timing of these layers (same models, batch and dtype)."""
        return ModelsOptions(run=self.run, dtypes=(self.dtype,), models=self.models,
                             resolution=self.resolution, batch_sizes=(self.batch_size,),
                             block_impls=self.block_impls, num_classes=self.num_classes)


LabOptions = Union[BlocksOptions, ModelsOptions, LayersOptions]


def to_dict(opts: LabOptions) -> dict[str, Any]:
    """JSON-friendly form of the options (results.json "options")."""
    d = dataclasses.asdict(opts)
    d["run"]["out"] = str(opts.run.out)
    return {"suite": opts.suite, **d}
