"""``python -m convfirst_jax.bench {blocks,models,layers} [options] --out results/<name>``.

The latency lab (Lavin 2024, Sec. 2): measures device ceilings once, times conv-first
blocks / whole models / single layers, and writes results.json (every raw sample and the
environment), results.csv, results.md and PNG figures into ``--out``.

Examples::

    python -m convfirst_jax.bench blocks --channels 96 192 --resolution 56 28 \\
        --kernel-size 7 --batch-sizes 1 8 32 128 --dtype bfloat16 --out results/blocks
    python -m convfirst_jax.bench models --models convfirst_tiny convnext_tiny resnet50 \\
        --batch-sizes 1 16 64 256 --dtypes bfloat16 --block-impls xla,pallas --train-step \\
        --waterline --compare-torch --training-summary 'runs/*/summary.json' --out results/models
    python -m convfirst_jax.bench layers --model convnext_tiny --batch-size 64 \\
        --dtype bfloat16 --out results/layers_convnext_tiny

On CPU only the XLA paths are timed: the Pallas kernel would run in interpret mode, which is
not a performance measurement (the lab says so and records the skip).
"""

from __future__ import annotations

import argparse
import glob
import json
import pathlib
import re
import sys
from typing import Any, Callable, Sequence

import jax

from convfirst_jax import host_memory
from convfirst_jax.bench import results
from convfirst_jax.bench.ceilings import Ceilings, get_ceilings
from convfirst_jax.bench.common import environment, nonneg_float, nonneg_int, positive_int
from convfirst_jax.bench.options import (LAB_BLOCK_IMPLS, BlocksOptions, CeilingOptions,
                                         LabOptions, LayersOptions, ModelsOptions,
                                         RunOptions, TimingOptions, to_dict)
from convfirst_jax.bench.results import fmt_time
from convfirst_jax.bench.runner import Notes, log, run_suite
from convfirst_jax.dtypes import DTYPE_NAMES
from convfirst_jax.models.blocks import BLOCK_IMPLS
from convfirst_jax.specs import list_models
from pallas_kernels.options import ACTIVATIONS, KERNEL_SIZES, NORMS


# ----------------------------------------------------------------------------- arg types
def _split(values: Sequence[str] | str) -> list[str]:
    if isinstance(values, str):
        values = [values]
    return [v for chunk in values for v in chunk.split(",") if v.strip()]


class ListAction(argparse.Action):
    """``--opt a b`` or ``--opt a,b``: a list, every item converted by ``item_type``."""

    def __init__(self, *a, item_type: Callable[[str], Any] = str,
                 choices_list: Sequence[Any] | None = None, **kw):
        self.item_type = item_type
        self.choices_list = choices_list
        super().__init__(*a, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        items = []
        for raw in _split(values):
            try:
                v = self.item_type(raw.strip())
            except argparse.ArgumentTypeError as e:
                parser.error(f"argument {option_string}: {e}")
            if self.choices_list is not None and v not in self.choices_list:
                parser.error(f"argument {option_string}: unknown value {v!r}; valid: "
                             f"{', '.join(map(str, self.choices_list))}")
            items.append(v)
        if not items:
            parser.error(f"argument {option_string}: give at least one value")
        setattr(namespace, self.dest, items)


def _list_arg(p: argparse.ArgumentParser, flag: str, *, item_type=str, choices=None,
              default=None, help: str = "", **kw) -> None:
    p.add_argument(flag, nargs="+", action=ListAction, item_type=item_type,
                   choices_list=choices, default=default, help=help, **kw)


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("output and timing")
    g.add_argument("--out", required=True, type=pathlib.Path,
                   help="output directory (results.json/csv/md and PNGs), e.g. results/blocks")
    g.add_argument("--warmup", type=nonneg_int, default=5, help="warm-up calls (default 5)")
    g.add_argument("--repeats", type=positive_int, default=30,
                   help="timed samples per measurement (default 30)")
    g.add_argument("--min-sample-ms", type=nonneg_float, default=2.0,
                   help="calls per sample are calibrated so one sample lasts at least this "
                        "(default 2 ms; 0 = one call per sample)")
    g.add_argument("--max-number", type=positive_int, default=100,
                   help="at most this many calls per sample (default 100)")
    g.add_argument("--buffers", type=nonneg_int, default=0,
                   help="input buffers rotated between calls (default 0 = auto: enough to "
                        "exceed twice the last-level cache, 2..16)")
    g.add_argument("--ceilings", choices=("measured", "datasheet"), default="measured",
                   help="peak FLOP/s and bandwidth: measured once at start (default) or the "
                        "datasheet table (falls back to measuring on unknown devices)")
    g.add_argument("--ceiling-matmul", type=positive_int, default=None,
                   help="matmul size n for the peak measurement (default 8192; CPU 1024)")
    g.add_argument("--ceiling-copy-mib", type=positive_int, default=None,
                   help="array size for the bandwidth measurement (default 1024 MiB; CPU 64)")
    g.add_argument("--seed", type=int, default=0, help="random data seed")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG figures")

    parser = argparse.ArgumentParser(
        prog="python -m convfirst_jax.bench",
        description="Latency lab (Lavin 2024, Sec. 2): efficiency gap and waterline of "
                    "conv-first blocks, whole models and single layers.",
        epilog="On CPU only XLA paths are timed (the Pallas interpreter is not a performance "
               "measurement). Three more commands take their own options (see their --help): "
               "static (the kernels' static H100 report), train-compare (CPU train steps, JAX "
               "vs PyTorch) and train-profile (where a CPU train step's time goes).")
    sub = parser.add_subparsers(dest="suite", required=True, metavar="{blocks,models,layers}")

    b = sub.add_parser("blocks", parents=[common], help="one conv-first block: xla vs pallas "
                       "vs jnp reference over a grid of shapes")
    _list_arg(b, "--channels", item_type=positive_int, default=[96], help="C (default 96)")
    _list_arg(b, "--resolution", item_type=positive_int, default=[56],
              help="feature-map height = width (default 56)")
    _list_arg(b, "--kernel-size", item_type=positive_int, default=[7],
              help="k of the k x k conv (default 7)")
    _list_arg(b, "--expansion", item_type=positive_int, default=[4], help="E (default 4)")
    _list_arg(b, "--dtype", choices=DTYPE_NAMES, default=None,
              help="compute dtype(s) (default bfloat16 on GPU, float32 on CPU)")
    _list_arg(b, "--batch-sizes", item_type=positive_int, default=[1, 8, 32, 128],
              help="batch sizes (default 1 8 32 128)")
    _list_arg(b, "--norm", choices=NORMS, default=["layernorm"],
              help="layernorm (ConvNeXt) or affine (folded BatchNorm, ConvFirst)")
    _list_arg(b, "--activation", choices=ACTIVATIONS, default=["gelu"],
              help="activation(s) (default gelu = exact erf)")
    b.add_argument("--group-width", type=int, choices=(1, 8), default=1,
                   help="1 = depthwise (default), 8 = grouped")
    b.add_argument("--no-layer-scale", dest="layer_scale", action="store_false",
                   help="leave out the per-channel layer scale")
    _list_arg(b, "--impls", choices=LAB_BLOCK_IMPLS, default=list(LAB_BLOCK_IMPLS),
              help="implementations (default xla,pallas,reference)")
    b.add_argument("--no-layer-breakdown", dest="layer_breakdown", action="store_false",
                   help="do not time the unfused ops one by one (waterline chart)")

    m = sub.add_parser("models", parents=[common], help="whole models: inference (and train "
                       "step) over batch sizes, dtypes and block impls")
    _list_arg(m, "--models", choices=list_models(),
              default=["convfirst_tiny", "convnext_tiny", "resnet50"],
              help="registry names (default convfirst_tiny convnext_tiny resnet50)")
    m.add_argument("--resolution", type=positive_int, default=224, help="input px (224)")
    _list_arg(m, "--batch-sizes", item_type=positive_int, default=[1, 16, 64, 256],
              help="batch sizes (default 1 16 64 256)")
    _list_arg(m, "--dtypes", choices=DTYPE_NAMES, default=None,
              help="compute dtype(s) (default bfloat16 on GPU, float32 on CPU)")
    _list_arg(m, "--block-impls", choices=BLOCK_IMPLS, default=list(BLOCK_IMPLS),
              help="conv-first block implementations (default xla,pallas)")
    m.add_argument("--train-step", action="store_true",
                   help="also time one train step (fwd + bwd + AdamW)")
    m.add_argument("--waterline", action="store_true",
                   help="also time every layer standalone (waterline chart) at --waterline-batch")
    m.add_argument("--waterline-batch", type=positive_int, default=None,
                   help="batch for --waterline (default: the first --batch-sizes value)")
    m.add_argument("--only", default=None, metavar="REGEX",
                   help="with --waterline: time only layers whose name matches REGEX")
    m.add_argument("--compare-torch", action="store_true",
                   help="also time timm's model of the same size (torch.compile, channels_last, "
                        "bf16 autocast) when torch + timm import")
    m.add_argument("--training-summary", nargs="+", default=[],
                   help="summary.json files (globs ok) from training runs, for latency vs top-1")
    m.add_argument("--num-classes", type=positive_int, default=1000)

    lay = sub.add_parser("layers", parents=[common], help="every layer of a model timed "
                         "standalone vs its floor (waterline chart)")
    _list_arg(lay, "--model", dest="models", choices=list_models(), default=["convnext_tiny"],
              help="registry name(s) (default convnext_tiny)")
    lay.add_argument("--resolution", type=positive_int, default=224)
    lay.add_argument("--batch-size", type=positive_int, default=32)
    lay.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                     help="default bfloat16 on GPU, float32 on CPU")
    _list_arg(lay, "--block-impls", choices=BLOCK_IMPLS, default=list(BLOCK_IMPLS),
              help="impls of the whole-model reference timing (default xla,pallas)")
    lay.add_argument("--only", default=None, metavar="REGEX",
                     help="time only layers whose name matches REGEX (e.g. 'stages.2|head')")
    lay.add_argument("--num-classes", type=positive_int, default=1000)
    return parser


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Cross-argument checks; any problem -> parser.error (exit status 2, no traceback)."""
    if getattr(args, "only", None) is not None:
        try:
            re.compile(args.only)
        except re.error as e:
            parser.error(f"--only {args.only!r} is not a valid regular expression ({e})")

    default_dtype = "bfloat16" if jax.default_backend() == "gpu" else "float32"
    if args.suite == "blocks":
        args.dtype = args.dtype or [default_dtype]
        for c in args.channels:
            if c % args.group_width:
                parser.error(f"--channels {c} is not divisible by --group-width "
                             f"{args.group_width}")
        if "pallas" in args.impls:
            bad = [c for c in args.channels if c % 8]
            if bad:
                parser.error(f"--channels {','.join(map(str, bad))}: the pallas kernel needs C "
                             "to be a multiple of 8; pick such C or drop pallas from --impls "
                             "(e.g. --impls xla,reference)")
            badk = [k for k in args.kernel_size if k not in KERNEL_SIZES]
            if badk:
                parser.error(f"--kernel-size {','.join(map(str, badk))}: the pallas kernel "
                             f"supports k in {', '.join(map(str, KERNEL_SIZES))}; drop pallas "
                             "from --impls for other k")
        for k in args.kernel_size:
            if k % 2 == 0:
                parser.error(f"--kernel-size {k}: must be odd ('SAME' padding k//2)")
    elif args.suite == "models":
        args.dtypes = args.dtypes or [default_dtype]
        if args.resolution < 32:
            parser.error(f"--resolution {args.resolution}: the models downsample 32x; "
                         "use at least 32")
    else:
        args.dtype = args.dtype or default_dtype
        if args.resolution < 32:
            parser.error(f"--resolution {args.resolution}: the models downsample 32x; "
                         "use at least 32")


def options_from_args(args: argparse.Namespace) -> LabOptions:
    """The typed options of a parsed and validated command line."""
    run = RunOptions(
        out=args.out,
        timing=TimingOptions(warmup=args.warmup, repeats=args.repeats,
                             min_sample_s=args.min_sample_ms / 1e3, max_number=args.max_number,
                             buffers=args.buffers, seed=args.seed),
        ceilings=CeilingOptions(
            mode=args.ceilings, matmul_n=args.ceiling_matmul,
            copy_bytes=args.ceiling_copy_mib << 20 if args.ceiling_copy_mib else None,
            repeats=min(10, max(3, args.repeats))),
        plots=not args.no_plots)
    if args.suite == "blocks":
        return BlocksOptions(
            run=run, dtypes=tuple(args.dtype), channels=tuple(args.channels),
            resolutions=tuple(args.resolution), kernel_sizes=tuple(args.kernel_size),
            expansions=tuple(args.expansion), batch_sizes=tuple(args.batch_sizes),
            norms=tuple(args.norm), activations=tuple(args.activation),
            group_width=args.group_width, layer_scale=args.layer_scale,
            impls=tuple(args.impls), layer_breakdown=args.layer_breakdown)
    if args.suite == "models":
        return ModelsOptions(
            run=run, dtypes=tuple(args.dtypes), models=tuple(args.models),
            resolution=args.resolution, batch_sizes=tuple(args.batch_sizes),
            block_impls=tuple(args.block_impls), train_step=args.train_step,
            waterline=args.waterline, waterline_batch=args.waterline_batch, only=args.only,
            compare_torch=args.compare_torch, training_summaries=tuple(args.training_summary),
            num_classes=args.num_classes)
    return LayersOptions(
        run=run, dtype=args.dtype, models=tuple(args.models), resolution=args.resolution,
        batch_size=args.batch_size, block_impls=tuple(args.block_impls), only=args.only,
        num_classes=args.num_classes)


def parse_options(argv: Sequence[str]) -> LabOptions:
    """Command line -> options; a bad argument exits with status 2 and one clear message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    validate(parser, args)
    return options_from_args(args)


# ----------------------------------------------------------------------------- top-1
def read_training_summaries(patterns: Sequence[str], notes: list[str] | None = None
                            ) -> dict[str, float]:
    """{model: top-1 in %} from the summary.json files ``python -m train`` writes.

    Reads ``model`` and ``best_top1`` (the best eval top-1 of the run, a fraction). Several
    runs of one model: the best top-1 is kept. Unreadable files and runs without an eval
    are noted and skipped.
    """
    out: dict[str, float] = {}
    for pat in patterns:
        for p in sorted(glob.glob(pat)) or [pat]:
            try:
                summary = json.loads(pathlib.Path(p).read_text())
            except (OSError, ValueError) as e:
                if notes is not None:
                    notes.append(f"--training-summary {p}: unreadable ({e}); ignored")
                continue
            model = summary.get("model") if isinstance(summary, dict) else None
            top1 = summary.get("best_top1") if isinstance(summary, dict) else None
            if not isinstance(model, str) or not isinstance(top1, (int, float)):
                if notes is not None:
                    notes.append(f"--training-summary {p}: no 'model' / 'best_top1' (not a "
                                 "summary.json of python -m train, or a run without eval); "
                                 "ignored")
                continue
            out[model] = max(100.0 * top1, out.get(model, float("-inf")))
    return out


# ----------------------------------------------------------------------------- main
def measure_all_ceilings(dtypes: Sequence[str], opts: CeilingOptions, device_kind: str,
                         notes: Notes) -> dict[str, Ceilings]:
    """The ceilings of every dtype, measured (or looked up) once each."""
    ceilings = {}
    for dt in dict.fromkeys(dtypes):
        log(f"[ceilings] {opts.mode} ceilings for {dt} on {device_kind}")
        ceilings[dt], note = get_ceilings(dt, opts.mode, **opts.measure_kwargs())
        if note:
            notes.add(note)
        c = ceilings[dt]
        log(f"[ceilings] {dt}: peak {c.peak_flops / 1e12:.3g} TFLOP/s, "
            f"bandwidth {c.bandwidth / 1e9:.3g} GB/s ({c.source})")
    return ceilings


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``convfirst-bench``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    host_memory.reuse_host_memory()  # timings: XLA:CPU buffers from one reused heap
    if argv[:1] == ["static"]:  # static H100 report: no timing, own options
        from convfirst_jax.bench.static import main as static_main
        return static_main(argv[1:])
    if argv[:1] == ["train-compare"]:  # CPU train steps vs PyTorch/timm: own options
        from convfirst_jax.bench.train_compare import main as train_compare_main
        return train_compare_main(argv[1:])
    if argv[:1] == ["train-profile"]:  # where a CPU train step's time goes: own options
        from convfirst_jax.bench.train_profile import main as train_profile_main
        return train_profile_main(argv[1:])
    opts = parse_options(argv)
    return run_lab(opts, argv)


def run_lab(opts: LabOptions, argv: Sequence[str] = ()) -> int:
    """Measure the ceilings, run the suite, write results.json/csv/md and the figures."""
    from convfirst_jax.bench import plots  # matplotlib: only once there is something to draw

    notes = Notes()
    env = environment(argv)
    dtypes = list(opts.dtypes)
    if isinstance(opts, ModelsOptions) and opts.compare_torch and "bfloat16" not in dtypes:
        from convfirst_jax.bench.torch_compare import torch_available

        if torch_available()[0]:
            dtypes.append("bfloat16")  # torch runs bf16 autocast: its ceilings too
    ceilings = measure_all_ceilings(dtypes, opts.run.ceilings, env["device_kind"], notes)

    top1: dict[str, float] = {}
    if isinstance(opts, ModelsOptions):
        tnotes: list[str] = []
        top1 = read_training_summaries(opts.training_summaries, tnotes)
        for n in tnotes:
            notes.add(n)
    records = run_suite(opts, ceilings, notes, top1=top1)

    out = opts.run.out
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    if opts.run.plots:
        summaries = _waterline_summaries(records)
        for fname, draw in (
                ("efficiency_gap.png", lambda p: plots.efficiency_gap_plot(records, env, p)),
                ("waterline.png", lambda p: plots.waterline_plot(records, env, p, summaries)),
                ("model_comparison.png",
                 lambda p: plots.model_comparison_plot(records, env, p, top1))):
            if draw(out / fname) is not None:
                figures.append(fname)
    payload = {"suite": opts.suite, "environment": env,
               "ceilings": {k: v.to_dict() for k, v in ceilings.items()},
               "options": to_dict(opts), "top1": top1, "notes": list(notes),
               "figures": figures, "records": records}
    results.write_json(out / "results.json", payload)
    results.write_csv(out / "results.csv", records)
    md = results.markdown_report(env, payload["ceilings"], records,
                                 title=f"Latency lab: {opts.suite}", notes=notes,
                                 figures=figures)
    results.write_markdown(out / "results.md", md)
    n_ok = sum(r.get("status") == "ok" for r in records)
    log(f"wrote {out}/results.json, results.csv, results.md"
        + (f", {', '.join(figures)}" if figures else "")
        + f" ({n_ok} measurements, {len(records) - n_ok} skipped)")
    return 0


def _waterline_summaries(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Per waterline group: the whole model / block measured jitted vs its floors (chart title)."""
    out: dict[str, str] = {}
    whole = [r for r in records if r.get("suite") in ("models", "blocks")
             and r.get("status") == "ok" and r.get("mode") == "inference"]
    groups = dict.fromkeys(r.get("group") for r in records if r.get("suite") == "layers")
    for g in groups:
        lrs = [r for r in records if r.get("group") == g and r.get("kind") != "block"]
        if not g or not lrs:
            continue
        b, dt = lrs[0]["batch_size"], lrs[0]["dtype"]
        parts = []
        aggs = [r for r in records if r.get("group") == g and r.get("kind") == "block"]
        is_model = " @" in g  # model groups are "name @RESpx"; block groups "label dtype"
        if not is_model and len(aggs) == 1 and aggs[0].get("fused_floor_s"):
            parts.append(f"fused block floor {fmt_time(aggs[0]['fused_floor_s'])}")
        for r in whole:
            if (r["name"] == g.split(" @")[0] or f"{r['name']} {r['dtype']}" == g) \
                    and r["batch_size"] == b and r["dtype"] == dt:
                what = "whole model" if is_model else "whole block"
                part = (f"{what}, {r['impl']} jitted: {fmt_time(r['median_s'])} = "
                        f"{r['latency_over_waterline']:.1f}× waterline")
                if r.get("fused_floor_s"):
                    part += f", {r['median_s'] / r['fused_floor_s']:.1f}× fused floor"
                parts.append(part)
        if parts:
            out[g] = "\n".join(parts)
    return out
