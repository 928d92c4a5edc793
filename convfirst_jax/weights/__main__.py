"""Import PyTorch weights and report what was mapped; optionally re-export as .safetensors.

    python -m convfirst_jax.weights MODEL FILE [--num-classes N --reset-head]
        [--naming auto|timm|official|torchvision] [--out OUT.safetensors]

Loads FILE (.safetensors, or .pth with torch) into MODEL (convfirst_jax.list_models()),
checks every tensor maps exactly once, prints the count and the parameter total, and with
``--out`` writes the weights back in timm naming (e.g. to turn a .pth into a .safetensors
that needs no torch, or an official ConvNeXt checkpoint into timm names). Exit code 2 with
one error line for a file that does not fit the model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx


def _main(argv: Sequence[str] | None) -> int:
    from convfirst_jax.weights import names as names_lib
    from convfirst_jax.weights.pretrained import (export_state_dict, load_pretrained,
                                                  read_state_dict, resolve_naming)

    parser = argparse.ArgumentParser(prog="python -m convfirst_jax.weights",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("model", help="architecture, e.g. convnext_tiny, resnet50")
    parser.add_argument("file", help="PyTorch weights: .safetensors or .pth")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--reset-head", action="store_true",
                        help="re-initialise a classifier whose class count differs")
    parser.add_argument("--naming", default="auto", choices=("auto",) + names_lib.NAMINGS)
    parser.add_argument("--out", help="write the loaded weights here in timm naming")
    args = parser.parse_args(argv)
    state_dict = read_state_dict(args.file)  # read once: for the naming and the weights
    naming = resolve_naming(state_dict, args.naming)
    model = load_pretrained(args.model, state_dict, num_classes=args.num_classes,
                            reset_head=args.reset_head, naming=naming)
    tensors = len(names_lib.tensor_map(model, naming))
    params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"{args.file}: {tensors} tensors ({naming} names) -> {args.model}, "
          f"{params / 1e6:.2f} M parameters, {model.num_classes} classes")
    if args.out:
        path = export_state_dict(model, args.out)
        print(f"wrote {path} (timm names)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    from convfirst_jax.weights.run import run_cli

    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
