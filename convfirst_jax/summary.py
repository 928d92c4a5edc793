"""``convfirst-summary``: per-layer complexity table of a model, and the README model table.

Examples::

    python -m convfirst_jax.summary convnext_tiny --resolution 224
    python -m convfirst_jax.summary convfirst_atto --format csv > atto.csv
    python -m convfirst_jax.summary resnet18 --resolution 64 --check-xla
    python -m convfirst_jax.summary --all --markdown
    python -m convfirst_jax.summary --all --update-readme README.md

The per-layer numbers are the analytic ones of :mod:`convfirst_jax.complexity` (Lavin 2024,
Sec. 2: operations and the bytes each unfused op moves). ``--check-xla`` builds the real Flax
model and prints XLA's own cost analysis of the jitted eval-mode forward beside ours.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys

from convfirst_jax.complexity import (ComplexityTable, model_complexity, model_table_markdown,
                                      model_table_rows, update_readme)
from convfirst_jax.complexity.table import ROW_FIELDS
from convfirst_jax.dtypes import DTYPE_NAMES, itemsize
from convfirst_jax.specs import list_models


def xla_cost_analysis(name: str, resolution: int, batch_size: int, dtype: str = "float32",
                      num_classes: int = 1000) -> dict:
    """XLA's cost analysis of the real model's jitted eval-mode forward (no weights allocated).

    Returns ``{"flops": ..., "transcendentals": ..., "bytes accessed": ...}`` as floats. The
    model is built abstractly (``nnx.eval_shape``), so this costs one compile and no memory.
    """
    import jax  # lazy: the table itself needs no jax
    import jax.numpy as jnp
    from flax import nnx

    from convfirst_jax import create_model
    from convfirst_jax.models.cpu_paths import conv_impl, depthwise_impl

    model = nnx.eval_shape(lambda: create_model(name, num_classes=num_classes,
                                                dtype=jnp.dtype(dtype)))
    model.eval()
    graphdef, state = nnx.split(model)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    x = jax.ShapeDtypeStruct((batch_size, resolution, resolution, 3), jnp.float32)
    # The library conv, as on a GPU: XLA charges the CPU shift-add depthwise form 2x per MAC
    # (and the block-diagonal form of few-group convs G x).
    with depthwise_impl("conv"), conv_impl("conv"):
        cost = jax.jit(forward).lower(state, x).compile().cost_analysis()
    return {k: float(cost.get(k, 0.0)) for k in ("flops", "transcendentals", "bytes accessed")}


def _csv(rows: list[dict], fields) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(r)
    return buf.getvalue().rstrip("\n")


def _totals_text(table: ComplexityTable) -> str:
    t = table.total
    return "\n".join([
        f"model        {table.model} @ {table.resolution}x{table.resolution}, batch "
        f"{table.batch_size}, {table.dtype_bytes} bytes/element",
        f"params       {t.params:,} ({t.params / 1e6:.2f} M)",
        f"MACs         {t.macs:,} ({t.macs / 1e9:.3f} G; convs + linears)",
        f"MACs fvcore  {table.fvcore_macs:,} ({table.fvcore_macs / 1e9:.3f} G; timm's convention,"
        f" + norms and pools)",
        f"FLOPs        {t.flops:,} ({t.flops / 1e9:.3f} G; 2 x MACs + element-wise)",
        f"transcend.   {t.transcendentals:,}",
        f"bytes        {t.bytes:,} ({t.bytes / 2**20:.2f} MiB unfused: activations read "
        f"{t.act_bytes_read:,}, written {t.act_bytes_written:,}, weights {t.weight_bytes:,})",
        f"intensity    {t.intensity:.2f} flops/byte (unfused)",
    ])


def render_model(table: ComplexityTable, fmt: str) -> str:
    """The per-layer table of one model in the chosen format, totals included."""
    if fmt == "json":
        return json.dumps({
            "model": table.model, "resolution": table.resolution,
            "batch_size": table.batch_size, "dtype_bytes": table.dtype_bytes,
            "num_classes": table.num_classes, "count_padding": table.count_padding,
            "totals": {**table.totals_row(), "fvcore_macs": table.fvcore_macs},
            "layers": table.to_rows()}, indent=1)
    if fmt == "csv":
        return _csv(table.to_rows() + [table.totals_row()], ROW_FIELDS)
    if fmt == "markdown":
        return table.to_markdown() + "\n\n```\n" + _totals_text(table) + "\n```"
    return table.to_text() + "\n\n" + _totals_text(table)


def render_all(fmt: str, resolution: int, num_classes: int) -> str:
    """The model table of every registered model (the README table for markdown / table)."""
    if fmt in ("json", "csv"):
        rows = model_table_rows(resolution, num_classes)
        if fmt == "json":
            return json.dumps(rows, indent=1)
        flat = [{**r, "depths": "-".join(map(str, r["depths"])),
                 "dims": "-".join(map(str, r["dims"]))} for r in rows]
        return _csv(flat, list(flat[0]))
    return model_table_markdown(resolution, num_classes)


def _check_xla_text(args, dtype: str) -> str:
    xla = xla_cost_analysis(args.model, args.resolution, args.batch_size, dtype,
                            args.num_classes)
    exact = model_complexity(args.model, args.resolution, args.batch_size, itemsize(dtype),
                             args.num_classes, count_padding=False)
    taps = model_complexity(args.model, args.resolution, args.batch_size, itemsize(dtype),
                            args.num_classes)

    def ratio(a, b):
        return f"{a / b:.4f}" if b else "n/a"

    return "\n".join([
        "XLA cost analysis of the jitted eval-mode forward (real model):",
        f"  XLA flops                               {xla['flops']:,.0f}",
        f"  ours, XLA's convention (padding taps    {exact.flops:,}  (ours / XLA = "
        f"{ratio(exact.flops, xla['flops'])})",
        "        excluded, transcendentals apart)",
        f"  ours, every tap counted                 {taps.flops:,}  (ours / XLA = "
        f"{ratio(taps.flops, xla['flops'])})",
        f"  XLA transcendentals                     {xla['transcendentals']:,.0f}",
        f"  ours transcendentals                    {exact.transcendentals:,}",
        f"  XLA bytes accessed (fused program)      {xla['bytes accessed']:,.0f}",
        f"  ours bytes (unfused op sequence)        {exact.bytes:,}",
    ])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convfirst-summary",
        description="Per-layer MACs / params / bytes of a registered model "
                    "(Lavin 2024 arithmetic complexity and memory traffic), or the README "
                    "model table with --all.")
    p.add_argument("model", nargs="?", help=f"model name; one of: {', '.join(list_models())}")
    p.add_argument("--resolution", type=int, default=224, help="input height = width (px)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="float32",
                   help="activation / weight dtype for the byte counts")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    p.add_argument("--markdown", action="store_true", help="same as --format markdown")
    p.add_argument("--check-xla", action="store_true",
                   help="also build the real model and print XLA's cost analysis beside ours")
    p.add_argument("--all", action="store_true",
                   help="the model table of every registered model (params, GMACs)")
    p.add_argument("--update-readme", metavar="README",
                   help="rewrite the model table between <!-- model-table:start --> and "
                        "<!-- model-table:end --> in this file (implies --all)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``convfirst-summary``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    fmt = "markdown" if args.markdown else args.format
    try:
        if args.update_readme:
            if args.model:
                raise ValueError("--update-readme writes the all-model table; drop the model name")
            changed = update_readme(args.update_readme)
            print(f"{args.update_readme}: model table {'updated' if changed else 'unchanged'}")
            return 0
        if args.all:
            if args.model:
                raise ValueError("give either a model name or --all, not both")
            print(render_all(fmt, args.resolution, args.num_classes))
            return 0
        if not args.model:
            raise ValueError("name a model (e.g. convnext_tiny) or pass --all; valid names: "
                             + ", ".join(list_models()))
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        table = model_complexity(args.model, args.resolution, args.batch_size,
                                 itemsize(args.dtype), args.num_classes)
        print(render_model(table, fmt))
        if args.check_xla:  # machine formats keep stdout parseable: the check goes to stderr
            out = sys.stderr if fmt in ("csv", "json") else sys.stdout
            print("", file=out)
            print(_check_xla_text(args, args.dtype), file=out)
    except BrokenPipeError:  # e.g. `convfirst-summary convnext_tiny | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # keep the interpreter from failing on flush
        return 1
    except (ValueError, OSError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
