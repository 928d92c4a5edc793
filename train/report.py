"""Accuracy-complexity report over training runs (console script ``convfirst-report``).

    python -m train.report runs/* [--baseline resnet18] [--targets 0.5 0.7] --out reports/NAME

Reads every ``RUN/summary.json`` written by ``python -m train`` and writes to ``--out``:

* ``report.md``: one row per run: params, GMACs per image (analytic, at the run's
  resolution), measured training throughput and eval latency, final / best top-1, training
  FLOPs (XLA cost analysis x steps, with the 3 x forward cross-check), and for each top-1
  target the training FLOPs to first reach it and its ratio to the baseline run;
* ``top1_vs_gmacs.png``, ``top1_vs_latency.png``: best top-1 against arithmetic complexity and
  against measured latency (Lavin 2024, Fig. 1: complexity is not latency);
* ``learning_curves.png``: eval top-1 against cumulative training FLOPs, log x;
* ``flops_to_target.png``: training FLOPs to each target as a ratio to the baseline
  (Hernandez & Brown 2020, Fig. 1: "44x less compute than AlexNet to reach AlexNet accuracy").
* ``report.json``: the same numbers, machine-readable.

The baseline is the run whose directory name or model name equals ``--baseline``
(default ``resnet18``); without a match the ratio columns and plot are left out.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from train import flops as flops_lib


def load_runs(run_dirs: Sequence[str | pathlib.Path]) -> dict[str, dict[str, Any]]:
    """run name (directory name) -> summary dict; directories without summary.json are skipped.

    Raises ValueError when none of the directories holds a summary.json.
    """
    runs: dict[str, dict[str, Any]] = {}
    skipped = []
    for d in run_dirs:
        path = pathlib.Path(d) / "summary.json"
        if not path.is_file():
            skipped.append(str(d))
            continue
        name = pathlib.Path(d).name
        if name in runs:  # same leaf name in two places: qualify with the parent
            name = f"{pathlib.Path(d).parent.name}/{name}"
        runs[name] = json.loads(path.read_text())
    if skipped:
        print(f"[report] skipped (no summary.json, unfinished?): {', '.join(skipped)}",
              file=sys.stderr)
    if not runs:
        raise ValueError("no summary.json found in "
                         f"{', '.join(map(str, run_dirs)) or '(no directories given)'}; pass "
                         "finished run directories, e.g. runs/*")
    return runs


def find_baseline(runs: dict[str, dict[str, Any]], baseline: str) -> str | None:
    """Name of the baseline run: exact directory name first, else the first run of that model."""
    if baseline in runs:
        return baseline
    for name in sorted(runs):
        if runs[name].get("model") == baseline:
            return name
    return None


def _targets(runs: dict[str, dict[str, Any]], requested: Sequence[float] | None) -> list[float]:
    if requested:
        return sorted(float(t) for t in requested)
    return sorted({float(t) for s in runs.values() for t in s.get("targets", {})})


def _fmt(x: Any, spec: str, missing: str = "-") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return missing
    return format(x, spec)


def _target_flops(summary: dict[str, Any], t: float) -> float | None:
    for k, rec in summary.get("targets", {}).items():
        if float(k) == t and rec:
            return float(rec["train_flops"])
    return None


def markdown_table(runs: dict[str, dict[str, Any]], targets: Sequence[float],
                   baseline: str | None) -> str:
    """The report table, one row per run (sorted by GMACs)."""
    head = ["run", "model", "res", "params (M)", "GMACs/img", "train img/s",
            "eval ms/batch", "top-1 final", "top-1 best", "train PFLOPs (XLA)",
            "XLA / 3xfwd"]
    for t in targets:
        head.append(f"PFLOPs to {t:.0%}" + (" (x base)" if baseline else ""))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ratios = (flops_lib.flops_to_target_ratios(runs, baseline, targets) if baseline else {})
    for name in sorted(runs, key=lambda n: (runs[n].get("macs_per_image") or 0, n)):
        s = runs[name]
        macs = s.get("macs_per_image")
        lat = s.get("eval_latency_ms_per_batch")
        row = [name + (" (baseline)" if name == baseline else ""), str(s.get("model")),
               str(s.get("image_size")),
               _fmt(s.get("params", 0) / 1e6, ".2f"),
               _fmt(macs / 1e9 if macs else None, ".3f"),
               _fmt(s.get("train_images_per_s"), ".0f"),
               (_fmt(lat, ".1f") + f" (B={s.get('eval_batch_size')})") if lat else "-",
               _fmt((s.get("final") or {}).get("top1"), ".3f"),
               _fmt(s.get("best_top1"), ".3f"),
               _fmt((s.get("train_flops_xla") or 0) / 1e15, ".4g"),
               _fmt(s.get("train_flops_ratio_xla_over_analytic"), ".2f")]
        for t in targets:
            f = _target_flops(s, t)
            cell = _fmt(f / 1e15 if f else None, ".4g", "not reached")
            r = ratios.get(name, {}).get(t)
            if baseline and r is not None:
                cell += f" ({r:.2f}x)"
            row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Plots


def _plt():
    import matplotlib  # noqa: PLC0415  (reporting-only dependency)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    return plt


def _log_if_wide(ax, values: Sequence[float], axis: str = "x", factor: float = 10.0) -> None:
    vals = [v for v in values if v and v > 0]
    if vals and max(vals) / min(vals) > factor:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _scatter(runs, xkey, xlabel, title, path, xscale=1.0) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    xs = []
    for name in sorted(runs):
        s = runs[name]
        x, y = s.get(xkey), s.get("best_top1")
        if x is None or y is None:
            continue
        x = x * xscale
        xs.append(x)
        ax.scatter([x], [100 * y], s=50, label=f"{name} ({s.get('model')})", zorder=3)
        ax.annotate(name, (x, 100 * y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if not xs:
        ax.text(0.5, 0.5, f"no run has {xkey}", ha="center", va="center",
                transform=ax.transAxes)
    else:
        _log_if_wide(ax, xs)
        ax.legend(fontsize=8, loc="best")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("best eval top-1 (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curves(runs, targets, path) -> None:
    """Eval top-1 vs cumulative training FLOPs (log x), targets as dashed lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    any_curve = False
    all_x: list[float] = []
    for name in sorted(runs):
        hist = [h for h in runs[name].get("history", [])
                if h.get("train_flops") and h.get("top1") is not None]
        if not hist:
            continue
        any_curve = True
        all_x += [h["train_flops"] for h in hist]
        ax.plot([h["train_flops"] for h in hist], [100 * h["top1"] for h in hist],
                marker="o", ms=3, label=f"{name} ({runs[name].get('model')})")
    for t in targets:
        ax.axhline(100 * t, ls="--", lw=0.8, color="gray")
        ax.annotate(f"target {t:.0%}", (0.01, 100 * t), xycoords=("axes fraction", "data"),
                    xytext=(0, 2), textcoords="offset points", fontsize=7, color="gray")
    if any_curve:
        from matplotlib.ticker import NullFormatter  # noqa: PLC0415
        ax.set_xscale("log")
        if max(all_x) / min(all_x) > 30:  # several decades: label the decades only
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no eval history", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("cumulative training FLOPs (XLA cost analysis)")
    ax.set_ylabel("eval top-1 (%)")
    ax.set_title("Learning curves against training compute")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_flops_to_target(runs, targets, baseline, path) -> None:
    """Grouped bars: training FLOPs to each target / baseline's (log y; < 1 = less compute)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    names = sorted(runs)
    ratios = flops_lib.flops_to_target_ratios(runs, baseline, targets) if baseline else {}
    usable = [t for t in targets if baseline and _target_flops(runs[baseline], t)]
    width = 0.8 / max(len(names), 1)
    plotted = []
    for i, name in enumerate(names):
        for j, t in enumerate(usable):
            r = ratios.get(name, {}).get(t)
            if r is None:
                continue
            x = j + (i - (len(names) - 1) / 2) * width
            bar = ax.bar([x], [r], width=width * 0.95, color=f"C{i}",
                         label=f"{name} ({runs[name].get('model')})" if name not in plotted
                         else None)
            plotted.append(name)
            ax.annotate(f"{r:.2f}x", (x, r), textcoords="offset points", xytext=(0, 2),
                        ha="center", fontsize=7)
            del bar
    if plotted:
        values = [r for rs in ratios.values() for t, r in rs.items() if r and t in usable]
        ax.set_yscale("log")
        ax.set_ylim(min(values + [1.0]) / 2, max(values + [1.0]) * 2)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(range(len(usable)))
        ax.set_xticklabels([f"top-1 {t:.0%}" for t in usable])
        ax.legend(fontsize=8, loc="best")
    else:
        why = ("no baseline run" if not baseline else
               f"the baseline {baseline} reached none of the targets")
        ax.text(0.5, 0.5, f"no ratios: {why}", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
    ax.set_ylabel(f"training FLOPs to target / {baseline or 'baseline'}'s (log)")
    ax.set_title("Training compute to reach a top-1 target, relative to the baseline\n"
                 "(Hernandez & Brown 2020; below 1 = less compute)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------


def write_report(run_dirs: Sequence[str | pathlib.Path], out: str | pathlib.Path,
                 baseline: str = "resnet18", targets: Sequence[float] | None = None
                 ) -> dict[str, pathlib.Path]:
    """Write report.md, report.json and the four PNGs to ``out``; returns their paths."""
    runs = load_runs(run_dirs)
    base = find_baseline(runs, baseline)
    if base is None:
        print(f"[report] no run named or of model {baseline!r}: ratios left out",
              file=sys.stderr)
    tgts = _targets(runs, targets)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f for k, f in (
        ("markdown", "report.md"), ("json", "report.json"),
        ("top1_vs_gmacs", "top1_vs_gmacs.png"), ("top1_vs_latency", "top1_vs_latency.png"),
        ("learning_curves", "learning_curves.png"), ("flops_to_target", "flops_to_target.png"))}

    _scatter(runs, "macs_per_image", "arithmetic complexity (GMACs per image, analytic)",
             "Top-1 vs complexity", paths["top1_vs_gmacs"], xscale=1e-9)
    sizes = sorted({s.get("eval_batch_size") for s in runs.values()} - {None})
    per = f"batch of {sizes[0]} images" if len(sizes) == 1 else "eval batch (sizes differ)"
    _scatter(runs, "eval_latency_ms_per_batch", f"measured eval latency (ms per {per})",
             "Top-1 vs measured latency", paths["top1_vs_latency"])
    plot_learning_curves(runs, tgts, paths["learning_curves"])
    plot_flops_to_target(runs, tgts, base, paths["flops_to_target"])

    devices = sorted({f"{s.get('devices')} x {s.get('device_kind')}" for s in runs.values()})
    md = [f"# Accuracy-complexity report ({len(runs)} runs)", "",
          f"Baseline for FLOPs-to-target ratios: **{base or 'none'}**. "
          f"Devices: {', '.join(devices)}. Training FLOPs are XLA cost analysis of the "
          "compiled train step x steps; 'XLA / 3xfwd' cross-checks them against 3 x the "
          "analytic forward FLOPs x images. A ratio below 1 means less training compute than "
          "the baseline to reach the same top-1 (Hernandez & Brown 2020).", "",
          markdown_table(runs, tgts, base), ""]
    md += [f"![{k}]({p.name})" for k, p in paths.items() if p.suffix == ".png"]
    paths["markdown"].write_text("\n".join(md) + "\n")
    report = {"baseline": base, "targets": tgts,
              "ratios": ({n: {str(t): r for t, r in rs.items()} for n, rs in
                          flops_lib.flops_to_target_ratios(runs, base, tgts).items()}
                         if base else None),
              "runs": {n: {k: v for k, v in s.items() if k != "config"}
                       for n, s in runs.items()}}
    paths["json"].write_text(json.dumps(report, indent=2))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.report",
        description="Markdown table + PNG plots of accuracy vs complexity, latency and "
                    "training FLOPs over finished training runs.")
    parser.add_argument("runs", nargs="+", help="run directories (each with summary.json)")
    parser.add_argument("--out", required=True, help="output directory, e.g. reports/NAME")
    parser.add_argument("--baseline", default="resnet18",
                        help="run directory name or model name of the baseline (resnet18)")
    parser.add_argument("--targets", type=float, nargs="*", default=None,
                        help="top-1 targets as fractions (default: those recorded in the runs)")
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.runs, args.out, args.baseline, args.targets)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[report] wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
