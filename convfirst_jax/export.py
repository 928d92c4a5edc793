"""Serving artifacts: a trained model as a ``jax.export`` module (serialized StableHLO).

    python -m convfirst_jax.export --workdir RUN --out DIR [--platforms cpu cuda]
        [--batch-size N|any] [--block-impl xla|pallas] [--step latest|best|N]
    python -m convfirst_jax.export --weights FILE --model NAME --out DIR ...

``DIR/model.jaxexport`` is ``jax.export.Exported.serialize()`` of ``images -> logits``
with the weights embedded as constants: input float32 (N, S, S, 3) NHWC images normalised
with the ImageNet mean/std (the eval transform), output float32 (N, num_classes) logits; N
is fixed at export (``--batch-size N``) or symbolic (``--batch-size any``, XLA blocks
only). ``DIR/serving.json`` records the input shape, the preprocessing, the class names,
the platforms and the versions. Running it needs only jax
(any version that reads this serialization version), not this package::

    import jax, numpy as np
    exp = jax.export.deserialize(open("DIR/model.jaxexport", "rb").read())
    logits = exp.call(images)        # images: float32 (N, S, S, 3)

BatchNorm is folded into the neighbouring conv / linear weights before export: ConvFirstNet
through :func:`convfirst_jax.fold_batchnorm` (every BN: stem, blocks, downsample, head),
ResNet by :func:`convfirst_jax.folding.fold_resnet_batchnorm` (each conv's BN into that conv,
leaving a bias).
ConvNeXt has LayerNorms only (they depend on the input, nothing to fold).
``--block-impl pallas`` runs every conv-first block as the fused kernel: the Triton kernel in
the CUDA lowering, the Pallas interpreter in a CPU lowering (slow; use xla for CPU serving).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from convfirst_jax import transforms
from convfirst_jax.folding import apply_folded, fold_batchnorm, fold_resnet_batchnorm
from convfirst_jax.models.inference import inference_fn
from convfirst_jax.models.macro import FourStageNet
from convfirst_jax.models.resnet import ResNet
from convfirst_jax.weights import run as run_lib
from pallas_kernels import cuda_export_target

TRITON_CALL = "__gpu$xla.gpu.triton"
ARTIFACT = "model.jaxexport"
SERVING_JSON = "serving.json"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def serving_function(model, *, block_impl: str = "xla") -> tuple[Callable, str]:
    """``images -> float32 logits`` of an eval-mode model with BatchNorm folded.

    Returns (function, how BN was handled). The weights are closed over (embedded as
    constants when exported).
    """
    model.eval()
    if isinstance(model, FourStageNet) and model.spec.norm == "batchnorm":
        folded = fold_batchnorm(model)
        return (lambda x: apply_folded(folded, x, block_impl=block_impl),
                "folded (convfirst_jax.fold_batchnorm)")
    if isinstance(model, ResNet):
        net, how = fold_resnet_batchnorm(model), "folded into each conv (fold_resnet_batchnorm)"
    else:
        if model.block_impl != block_impl:
            raise ValueError(f"the model was built with block_impl={model.block_impl!r}; "
                             f"build it with {block_impl!r}")
        net, how = model, "none (LayerNorm model)"
    forward, state = inference_fn(net)
    return functools.partial(forward, state), how


def export_model(model, *, batch_size: int | None, image_size: int,
                 platforms: Sequence[str] = ("cpu",), block_impl: str = "xla"
                 ) -> tuple[jax.export.Exported, str]:
    """``jax.export`` of :func:`serving_function` for a (batch, S, S, 3) float32 input.

    ``batch_size=None`` exports a symbolic batch dimension (any N at call time); the fused
    Pallas kernel needs static shapes, so that is for ``block_impl="xla"`` only.
    """
    if batch_size is None:
        if block_impl == "pallas":
            raise ValueError("a symbolic batch size needs block_impl='xla' (the fused Pallas "
                             "kernel has static block shapes); pass --batch-size N")
        (batch,) = jax.export.symbolic_shape("batch")
    elif isinstance(batch_size, int) and batch_size >= 1:
        batch = batch_size
    else:
        raise ValueError(f"need batch_size >= 1 (or None for any), got {batch_size!r}")
    if image_size < 32:
        raise ValueError(f"need image_size >= 32, got {image_size}")
    bad = [p for p in platforms if p not in PLATFORMS]
    if bad or not platforms:
        raise ValueError(f"unknown platform(s) {bad}; choose from {', '.join(PLATFORMS)}")
    fn, how = serving_function(model, block_impl=block_impl)
    disabled = ([jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)]
                if block_impl == "pallas" else [])
    spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    # jax 0.11 lowers the Triton call only for a named GPU; on a machine without one, name the
    # GPU the launch table was tuned for (harmless with jax 0.10).
    needs_target = ("cuda" in platforms and block_impl == "pallas"
                    and jax.default_backend() != "gpu")
    target = cuda_export_target() if needs_target else contextlib.nullcontext()
    with target:
        exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms),
                                     disabled_checks=disabled)(spec)
    return exported, how


def write_artifact(run, out: str | pathlib.Path, *, batch_size: int | None = 1,
                   platforms: Sequence[str] = ("cpu",), block_impl: str = "xla"
                   ) -> pathlib.Path:
    """Export ``run.model`` (a :class:`~convfirst_jax.weights.run.LoadedRun`) into ``out``."""
    exported, how = export_model(run.model, batch_size=batch_size, image_size=run.image_size,
                                 platforms=platforms, block_impl=block_impl)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ARTIFACT).write_bytes(exported.serialize())
    info: dict[str, Any] = {
        "artifact": ARTIFACT,
        "model": run.config.get("model"), "step": run.step, "ema": run.ema,
        "source": str(run.config.get("weights") or run.workdir),
        "platforms": list(exported.platforms), "block_impl": block_impl,
        "batchnorm": how,
        "input": {"shape": [batch_size, run.image_size, run.image_size, 3],
                  "dtype": "float32", "layout": "NHWC", "batch": "fixed" if batch_size
                  else "any (symbolic; shape[0] is null)"},
        "output": {"shape": [batch_size, int(run.model.num_classes)], "dtype": "float32",
                   "meaning": "logits"},
        "preprocessing": {
            "resize": "short side to floor(image_size / crop_pct), bilinear",
            "crop": "centre, image_size x image_size", "image_size": run.image_size,
            "crop_pct": transforms.DEFAULT_CROP_PCT,
            "normalize": "(rgb / 255 - mean) / std",
            "mean": [float(v) for v in transforms.IMAGENET_MEAN],
            "std": [float(v) for v in transforms.IMAGENET_STD]},
        "classes": list(run.classes),
        "jax_version": jax.__version__,
        "calling_convention_version": exported.calling_convention_version,
        "load": "jax.export.deserialize(open(path, 'rb').read()).call(images)",
    }
    (out / SERVING_JSON).write_text(json.dumps(info, indent=1) + "\n")
    return out


def _batch_size(text: str) -> int | None:
    if text == "any":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'any', got {text!r}") from None


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convfirst_jax.export",
                                     description="Write a jax.export serving artifact.")
    run_lib.add_model_arguments(parser)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--platforms", nargs="+", default=["cpu"], choices=PLATFORMS)
    parser.add_argument("--batch-size", type=_batch_size, default=1,
                        help="fixed batch N (default 1), or 'any' for a symbolic batch "
                        "(block_impl xla only)")
    args = parser.parse_args(argv)
    block_impl = args.block_impl or "xla"
    args.block_impl = block_impl
    run = run_lib.model_from_args(args)
    out = write_artifact(run, args.out, batch_size=args.batch_size, platforms=args.platforms,
                         block_impl=block_impl)
    size = (out / ARTIFACT).stat().st_size
    print(f"wrote {out / ARTIFACT} ({size / 1e6:.1f} MB; {run.config.get('model')}, "
          f"platforms {' '.join(args.platforms)}, batch {args.batch_size or 'any'}, "
          f"{run.image_size} px, block_impl {block_impl}) and {out / SERVING_JSON}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code (2 for bad arguments / paths)."""
    return run_lib.run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
