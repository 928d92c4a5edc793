"""A trained model from a training run directory (``python -m train --workdir RUN``).

Layout written by ``train.loop``: ``RUN/config.json`` (the run's config), ``RUN/classes.json``
(class names, label i = i-th), ``RUN/checkpoints/<step>/state`` (orbax: the TrainState --
params, BatchNorm statistics, RNG state, optimizer state, EMA copies), ``metrics.jsonl``,
``summary.json``. :func:`load_run` rebuilds the model from ``config.json``, reads the
checkpoint's own array metadata (so it needs neither the optimizer nor the training
packages grain / ml_collections) and fills the model. The EMA weights are used when the run
kept an EMA, as the training loop's evaluation does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from convfirst_jax.models.blocks import BLOCK_IMPLS
from convfirst_jax.models.registry import abstract_model
from convfirst_jax.weights.pretrained import load_pretrained

PathLike = str | os.PathLike


class RunError(ValueError):
    """A run directory that cannot be loaded (the message says what is wrong and what to do)."""


@dataclasses.dataclass
class LoadedRun:
    """A model restored from a run directory, in eval mode.

    Attributes:
      model: the Flax NNX model (eval mode).
      classes: class names (label i = ``classes[i]``).
      config: the run's config (plain dict from config.json).
      step: the checkpoint step that was loaded.
      ema: whether the EMA weights were loaded.
      workdir: the run directory.
    """

    model: nnx.Module
    classes: list[str]
    config: dict[str, Any]
    step: int
    ema: bool
    workdir: pathlib.Path

    @property
    def image_size(self) -> int:
        return int(self.config.get("image_size", 224))


def _read_json(path: pathlib.Path, what: str) -> Any:
    if not path.is_file():
        raise RunError(f"{path} is missing: {what}; is {path.parent} a training workdir "
                       "(python -m train --workdir RUN)?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e})") from None


def checkpoint_steps(workdir: PathLike) -> list[int]:
    """Steps of the complete checkpoints of a run, ascending."""
    ckdir = pathlib.Path(workdir) / "checkpoints"
    if not ckdir.is_dir():
        return []
    steps = []
    for entry in ckdir.iterdir():
        # orbax renames a step directory to its number only once it is complete.
        if entry.is_dir() and entry.name.isdigit() and (entry / "state").is_dir():
            steps.append(int(entry.name))
    return sorted(steps)


def best_step(workdir: PathLike) -> int | None:
    """The kept checkpoint with the highest eval top-1 (orbax ``metrics`` item), or None."""
    best, best_top1 = None, None
    for step in checkpoint_steps(workdir):
        path = pathlib.Path(workdir) / "checkpoints" / str(step) / "metrics" / "metrics"
        try:
            top1 = float(json.loads(path.read_text())["top1"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if best_top1 is None or top1 > best_top1:
            best, best_top1 = step, top1
    return best


def _resolve_step(workdir: pathlib.Path, step: int | str) -> int:
    steps = checkpoint_steps(workdir)
    if not steps:
        raise RunError(f"{workdir / 'checkpoints'} holds no complete checkpoint; train first "
                       "(python -m train --workdir RUN) or pass another --workdir")
    if step == "latest":
        return steps[-1]
    if step == "best":
        best = best_step(workdir)
        if best is None:
            raise RunError(f"no checkpoint of {workdir} has an eval top-1; use --step latest")
        return best
    try:
        step = int(step)
    except (TypeError, ValueError):
        raise RunError(f"step must be 'latest', 'best' or a number, got {step!r}") from None
    if step not in steps:
        raise RunError(f"{workdir} has no checkpoint at step {step}; available: {steps}")
    return step


def _strip_value(path: tuple) -> tuple:
    return path[:-1] if path and path[-1] == "value" else path


class _QuietMetadata:
    """Hide orbax's "Metadata file does not exist" warning: train.checkpoint's composite
    layout keeps that file one level up, and the array metadata is read all the same."""

    def filter(self, record) -> bool:
        return "Metadata file does not exist" not in record.getMessage()


def _restore_arrays(state_dir: pathlib.Path) -> dict:
    import logging

    import orbax.checkpoint as ocp

    quiet = _QuietMetadata()
    absl = logging.getLogger("absl")
    absl.addFilter(quiet)
    try:
        return _restore_arrays_quiet(ocp, state_dir)
    finally:
        absl.removeFilter(quiet)


def _restore_arrays_quiet(ocp, state_dir: pathlib.Path) -> dict:
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.metadata(state_dir)
        tree = getattr(tree, "item_metadata", tree)
        device = jax.devices()[0]
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype,
                                           sharding=jax.sharding.SingleDeviceSharding(device)),
            tree)
        return ckptr.restore(state_dir, target)


def _flat(tree: Any) -> dict[tuple, Any]:
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        keys = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        out[_strip_value(keys)] = leaf
    return out


def fill_from_checkpoint(model: nnx.Module, restored: dict, *, use_ema: bool = True
                         ) -> tuple[nnx.Module, bool]:
    """Copy params / batch_stats / rest of a restored TrainState dict into ``model``.

    Returns (model, whether the EMA copies were used). Raises RunError naming the variables
    the checkpoint lacks or has with another shape.
    """
    ema = bool(use_ema and restored.get("ema_params"))
    params = _flat(restored["ema_params" if ema else "params"])
    stats = _flat(restored.get("ema_batch_stats" if ema else "batch_stats") or {})
    rest = _flat(restored.get("rest") or {})
    graphdef, state = nnx.split(model)
    problems, flat = [], []
    for path, var in nnx.to_flat_state(state):
        key = tuple(str(p) for p in path)
        source = (params if isinstance(var, nnx.Param) else
                  stats if isinstance(var, nnx.BatchStat) else rest)
        value = source.get(key)
        current = var.get_value() if hasattr(var, "get_value") else var.value
        if value is None:
            if isinstance(var, (nnx.Param, nnx.BatchStat)):
                problems.append(f"missing {'/'.join(key)}")
            flat.append((path, var))
            continue
        if jax.dtypes.issubdtype(current.dtype, jax.dtypes.prng_key):
            # Stored as raw uint32 key data (train.checkpoint); the abstract key's dtype
            # carries the PRNG implementation.
            impl = getattr(current.dtype, "_impl", None)
            value = (jax.random.wrap_key_data(value, impl=impl) if impl is not None
                     else jax.random.wrap_key_data(value))
        elif tuple(value.shape) != tuple(current.shape):
            problems.append(f"{'/'.join(key)} {tuple(value.shape)} (model {tuple(current.shape)})")
            continue
        else:
            value = jnp.asarray(value, current.dtype)
        flat.append((path, var.replace(value)))
    if problems:
        shown = ", ".join(problems[:8]) + (f" (+{len(problems) - 8} more)" if len(problems) > 8
                                           else "")
        raise RunError(f"the checkpoint does not match {model.spec.name}: {shown}")
    return nnx.merge(graphdef, nnx.from_flat_state(flat)), ema


def load_run(workdir: PathLike, *, step: int | str = "latest", block_impl: str | None = None,
             use_ema: bool = True) -> LoadedRun:
    """Restore the model of a training run (see module docstring), in eval mode.

    Args:
      workdir: the run directory given to ``python -m train --workdir``.
      step: "latest" (default), "best" (highest eval top-1 among the kept checkpoints) or a
        step number.
      block_impl: "xla" / "pallas" override (default: the run's own ``block_impl``).
      use_ema: load the EMA weights when the run kept an EMA (what its evaluation reported).
    Raises RunError (a ValueError) for a path that is not a complete run.
    """
    wd = pathlib.Path(workdir).expanduser()
    if not wd.is_dir():
        raise RunError(f"workdir {str(wd)!r} does not exist")
    config = _read_json(wd / "config.json", "the run's config")
    classes = _read_json(wd / "classes.json", "the class names")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise RunError(f"{wd / 'classes.json'} must be a JSON list of class names")
    resolved = _resolve_step(wd, step)
    num_classes = int(config.get("num_classes") or 0) or len(classes)
    model = abstract_model(config["model"], num_classes=num_classes,
                           block_impl=block_impl or config.get("block_impl", "xla"),
                           dtype=jnp.dtype(config.get("dtype", "float32")))
    restored = _restore_arrays(wd / "checkpoints" / str(resolved) / "state")
    model, ema = fill_from_checkpoint(model, restored, use_ema=use_ema)
    model.eval()
    return LoadedRun(model=model, classes=list(classes), config=config, step=resolved, ema=ema,
                     workdir=wd)


# ----------------------------------------------------------------------------------------------
# Shared command-line plumbing of evaluate / predict / export


def read_class_names(path: PathLike) -> list[str]:
    """Class names from a JSON list (classes.json) or a text file with one name per line."""
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise RunError(f"class names file {str(p)!r} does not exist")
    text = p.read_text()
    if p.suffix == ".json":
        names = json.loads(text)
        if not isinstance(names, list):
            raise RunError(f"{p} must hold a JSON list of class names")
        return [str(n) for n in names]
    return [line.strip() for line in text.splitlines() if line.strip()]


def add_model_arguments(parser, *, default_image_size: int | None = None) -> None:
    """--workdir RUN [--step] or --weights FILE --model NAME [--classes] [--num-classes]."""
    src = parser.add_argument_group("model (a training run, or PyTorch weights)")
    src.add_argument("--workdir", help="training run directory (config.json, classes.json, "
                     "checkpoints/)")
    src.add_argument("--step", default="latest",
                     help="checkpoint of the run: latest (default), best, or a step number")
    src.add_argument("--no-ema", action="store_true",
                     help="use the raw weights even when the run kept an EMA")
    src.add_argument("--weights", help="PyTorch weights (.safetensors, or .pth with torch) "
                     "in timm / official ConvNeXt / torchvision naming; needs --model")
    src.add_argument("--model", help="architecture of --weights, e.g. convnext_tiny, resnet50")
    src.add_argument("--classes", help="class names for --weights: classes.json or a text "
                     "file with one name per line (default: class indices)")
    src.add_argument("--block-impl", choices=BLOCK_IMPLS, default=None,
                     help="conv-first block implementation (default: the run's; xla for "
                     "--weights)")
    src.add_argument("--image-size", type=int, default=default_image_size,
                     help="input resolution (default: the run's image_size; 224 for --weights)")


def model_from_args(args) -> LoadedRun:
    """The model named by :func:`add_model_arguments`' options (RunError on bad use)."""
    if bool(args.workdir) == bool(args.weights):
        raise RunError("pass either --workdir RUN or --weights FILE --model NAME")
    if args.workdir:
        run = load_run(args.workdir, step=args.step, block_impl=args.block_impl,
                       use_ema=not args.no_ema)
        if getattr(args, "image_size", None):
            run.config = dict(run.config, image_size=int(args.image_size))
        return run
    if not args.model:
        raise RunError("--weights needs --model NAME (e.g. convnext_tiny, resnet50)")
    model = load_pretrained(args.model, args.weights, block_impl=args.block_impl or "xla")
    classes = (read_class_names(args.classes) if args.classes
               else [str(i) for i in range(model.num_classes)])
    if len(classes) != model.num_classes:
        raise RunError(f"{args.classes} has {len(classes)} names but the weights have "
                       f"{model.num_classes} classes")
    config = {"model": args.model, "image_size": int(args.image_size or 224),
              "block_impl": args.block_impl or "xla", "dtype": "float32",
              "weights": str(args.weights)}
    return LoadedRun(model=model, classes=classes, config=config, step=-1, ema=False,
                     workdir=pathlib.Path(args.weights).parent)


def run_cli(main_fn, argv=None) -> int:
    """Run ``main_fn(argv)``; a user error prints one ``error: ...`` line and returns 2."""
    import sys

    try:
        return int(main_fn(argv) or 0)
    except (RunError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
