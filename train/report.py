"""Accuracy-complexity report over training runs (console script ``convfirst-report``).

    python -m train.report runs/* [--baseline resnet18] [--targets 0.5 0.7] --out reports/NAME

Reads every ``RUN/summary.json`` written by ``python -m train`` (and ``RUN/latency.json`` when
``python -m train.study`` measured the forward latency) and writes to ``--out``:

* ``report.md``: two tables. Models: dataset, params, GMACs per image (analytic, at the run's
  resolution), measured CPU latency at batch 1 and 64, training images/s, final top-1 / top-5,
  training FLOPs and wall time. Targets: for each top-1 target the training FLOPs and wall
  time to first reach it, and the FLOPs ratio to the baseline run;
* ``top1_vs_gmacs.png``, ``top1_vs_latency.png``: final top-1 against arithmetic complexity and
  against measured latency (Lavin 2024, Fig. 1: complexity is not latency);
* ``top1_vs_train_flops.png``: eval top-1 against cumulative training FLOPs, log x (the
  Hernandez & Brown 2020 view: the compute needed to reach an accuracy);
* ``flops_to_target.png``: training FLOPs to each target as a ratio to the baseline
  (Hernandez & Brown 2020, Fig. 1), drawn only when the baseline reached a target;
* ``report.json``: the same numbers, machine-readable.

Training FLOPs are 3 x the analytic forward FLOPs x training images (backward = 2 x forward,
the Hernandez & Brown convention), so they do not depend on how XLA lowers a conv; the XLA cost
analysis of the compiled step is the cross-check column. Runs without the analytic count
fall back to XLA's. Runs on different datasets are never drawn in one plot: each dataset gets
its own set of PNGs (``NAME_<dataset>.png``) when there are several. The baseline is the run
whose directory name or model name equals ``--baseline`` (default ``resnet18``); without a
match the ratio columns and plot are left out.
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

LATENCY_FILE = "latency.json"  # written by train.study next to summary.json


def load_runs(run_dirs: Sequence[str | pathlib.Path]) -> dict[str, dict[str, Any]]:
    """run name (directory name) -> summary dict; directories without summary.json are skipped.

    A ``latency.json`` beside the summary is read into ``summary["latency_ms"]`` (batch size
    as a string -> ms). Raises ValueError when none of the directories holds a summary.json.
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
        summary = json.loads(path.read_text())
        lat = pathlib.Path(d) / LATENCY_FILE
        if lat.is_file():
            summary["latency_ms"] = json.loads(lat.read_text()).get("latency_ms", {})
        runs[name] = summary
    if skipped:
        print(f"[report] skipped (no summary.json, unfinished?): {', '.join(skipped)}",
              file=sys.stderr)
    if not runs:
        raise ValueError("no summary.json found in "
                         f"{', '.join(map(str, run_dirs)) or '(no directories given)'}; pass "
                         "finished run directories, e.g. runs/*")
    return runs


def dataset_of(summary: dict[str, Any]) -> str:
    """The dataset label of a run: its ``dataset`` entry, else the data folder's name
    (``synthetic`` for the embedded set, config ``data_dir=''``), else ``unknown``."""
    if summary.get("dataset"):
        return str(summary["dataset"])
    cfg = summary.get("config") or {}
    if "data_dir" in cfg:
        return pathlib.Path(cfg["data_dir"]).name if cfg["data_dir"] else "synthetic"
    if summary.get("data_dir"):
        return pathlib.Path(summary["data_dir"]).name
    return "unknown"


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


def _pct(x: float | None) -> str:
    return _fmt(100 * x if x is not None else None, ".1f")


def _flops_per_step(summary: dict[str, Any]) -> float | None:
    """Analytic training FLOPs of one step: 3 x forward FLOPs per image x batch (or None)."""
    fwd, batch = summary.get("forward_flops_per_image"), summary.get("batch_size")
    return 3.0 * float(fwd) * int(batch) if fwd and batch else None


def train_flops_at(summary: dict[str, Any], record: dict[str, Any]) -> float | None:
    """Training FLOPs at a history / target record: analytic 3 x forward x images at its step,
    the record's (XLA) ``train_flops`` when the run has no analytic count."""
    per_step = _flops_per_step(summary)
    if per_step is not None and record.get("step") is not None:
        return per_step * int(record["step"])
    f = record.get("train_flops")
    return float(f) if f else None


def _target_record(summary: dict[str, Any], t: float) -> dict[str, Any] | None:
    for k, rec in summary.get("targets", {}).items():
        if float(k) == t and rec:
            return rec
    return None


def _with_analytic_targets(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Copies of the summaries whose target records carry the analytic ``train_flops``."""
    out = {}
    for name, s in runs.items():
        targets = {k: (dict(rec, train_flops=train_flops_at(s, rec)) if rec else rec)
                   for k, rec in s.get("targets", {}).items()}
        out[name] = dict(s, targets=targets)
    return out


def ratios(runs: dict[str, dict[str, Any]], baseline: str | None, targets: Sequence[float]
           ) -> dict[str, dict[float, float | None]]:
    """FLOPs-to-target of every run / the baseline's, on the analytic training FLOPs."""
    if not baseline:
        return {}
    return flops_lib.flops_to_target_ratios(_with_analytic_targets(runs), baseline, targets)


def _total_flops(s: dict[str, Any]) -> float | None:
    per_step = _flops_per_step(s)
    if per_step is not None and s.get("steps"):
        return per_step * int(s["steps"])
    return s.get("train_flops_xla")


def _order(runs: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(runs, key=lambda n: (dataset_of(runs[n]), runs[n].get("macs_per_image") or 0,
                                       n))


def markdown_table(runs: dict[str, dict[str, Any]], targets: Sequence[float],
                   baseline: str | None) -> str:
    """The models table (one row per run, by dataset then GMACs) and the targets table.

    Accuracies are the final evaluation's, in percent; PFLOPs are training FLOPs / 1e15.
    """
    head = ["run", "dataset", "model", "res", "params (M)", "GMACs/img", "latency b1 (ms)",
            "latency b64 (ms)", "train img/s", "top-1 (%)", "top-5 (%)", "train PFLOPs",
            "XLA / 3xfwd", "wall time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in _order(runs):
        s = runs[name]
        macs = s.get("macs_per_image")
        lat = s.get("latency_ms") or {}
        final = s.get("final") or {}
        total = _total_flops(s)
        row = [name + (" (baseline)" if name == baseline else ""), dataset_of(s),
               str(s.get("model")), str(s.get("image_size")),
               _fmt(s.get("params", 0) / 1e6, ".2f"),
               _fmt(macs / 1e9 if macs else None, ".3f"),
               _fmt(lat.get("1"), ".2f"), _fmt(lat.get("64"), ".1f"),
               _fmt(s.get("train_images_per_s"), ".0f"),
               _pct(final.get("top1")), _pct(final.get("top5")),
               _fmt(total / 1e15 if total else None, ".3g"),
               _fmt(s.get("train_flops_ratio_xla_over_analytic"), ".2f"),
               _fmt(s.get("wall_time_s"), ".0f")]
        lines.append("| " + " | ".join(row) + " |")
    if not targets:
        return "\n".join(lines)
    rs = ratios(runs, baseline, targets)
    head = ["run"]
    for t in targets:
        head += [f"PFLOPs to {t:.0%}" + (" (x base)" if baseline else ""), f"time to {t:.0%} (s)"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in _order(runs):
        s = runs[name]
        row = [name + (" (baseline)" if name == baseline else "")]
        for t in targets:
            rec = _target_record(s, t)
            f = train_flops_at(s, rec) if rec else None
            cell = _fmt(f / 1e15 if f else None, ".3g", "not reached")
            r = rs.get(name, {}).get(t)
            if baseline and r is not None:
                cell += f" ({r:.2f}x)"
            row += [cell, _fmt(rec.get("wall_time_s") if rec else None, ".0f", "-")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Plots


def _plt():
    import matplotlib  # reporting-only dependency
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_label(runs: dict[str, dict[str, Any]], device: str | None = None) -> str:
    """"dataset, resolution, device, jax version, date" of a group of runs (one line)."""
    def one(values, what):
        vals = sorted({str(v) for v in values if v is not None})
        return vals[0] if len(vals) == 1 else (f"{what}s differ" if vals else f"{what} ?")
    ss = list(runs.values())
    dev = device or one((f"{s.get('devices')} x {s.get('device_kind')}" for s in ss), "device")
    dates = sorted(str(s["finished_utc"])[:10] for s in ss if s.get("finished_utc"))
    date = (dates[0] if dates and dates[0] == dates[-1]
            else (f"{dates[0]}..{dates[-1]}" if dates else "date ?"))
    return (f"{one((dataset_of(s) for s in ss), 'dataset')}, "
            f"{one((s.get('image_size') for s in ss), 'resolution')} px, {dev}, "
            f"jax {one((s.get('jax_version') for s in ss), 'jax version')}, {date}")


def _log_if_wide(ax, values: Sequence[float], axis: str = "x", factor: float = 10.0) -> bool:
    vals = [v for v in values if v and v > 0]
    if vals and max(vals) / min(vals) > factor:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        return True
    return False


def _scatter(runs, points, xlabel, title, label, path) -> None:
    """points: run name -> (x, y in [0, 1]); one labelled dot per run."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    xs = []
    for name in sorted(points):
        x, y = points[name]
        xs.append(x)
        ax.scatter([x], [100 * y], s=50, label=f"{name} ({runs[name].get('model')})", zorder=3)
        ax.annotate(name, (x, 100 * y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if not xs:
        ax.text(0.5, 0.5, "no run has this measurement", ha="center", va="center",
                transform=ax.transAxes)
    else:
        log = _log_if_wide(ax, xs)
        if log:
            xlabel += " (log)"
        ax.legend(fontsize=8, loc="best")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("final eval top-1 (%)")
    ax.set_title(f"{title}\n{label}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _final_top1(s: dict[str, Any]) -> float | None:
    return (s.get("final") or {}).get("top1")


def plot_top1_vs_gmacs(runs, label, path) -> None:
    """Final top-1 against analytic GMACs per image."""
    pts = {n: (s["macs_per_image"] / 1e9, _final_top1(s)) for n, s in runs.items()
           if s.get("macs_per_image") and _final_top1(s) is not None}
    _scatter(runs, pts, "arithmetic complexity (GMACs per image, analytic)",
             "Top-1 vs complexity", label, path)


def plot_top1_vs_latency(runs, label, path) -> None:
    """Final top-1 against measured forward latency at batch 1 (latency.json), else against
    the eval batch latency of the training run."""
    if any((s.get("latency_ms") or {}).get("1") for s in runs.values()):
        pts = {n: (s["latency_ms"]["1"], _final_top1(s)) for n, s in runs.items()
               if (s.get("latency_ms") or {}).get("1") and _final_top1(s) is not None}
        xlabel = "measured forward latency, batch 1 (ms)"
    else:
        pts = {n: (s["eval_latency_ms_per_batch"], _final_top1(s)) for n, s in runs.items()
               if s.get("eval_latency_ms_per_batch") and _final_top1(s) is not None}
        sizes = sorted({s.get("eval_batch_size") for s in runs.values()} - {None})
        xlabel = ("measured eval latency (ms per batch of "
                  + (f"{sizes[0]})" if len(sizes) == 1 else "differing sizes)"))
    _scatter(runs, pts, xlabel, "Top-1 vs measured latency", label, path)


def plot_top1_vs_train_flops(runs, targets, label, path) -> None:
    """Eval top-1 against cumulative training FLOPs (log x), targets as dashed lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    all_x: list[float] = []
    for name in sorted(runs):
        s = runs[name]
        pts = [(train_flops_at(s, h), h["top1"]) for h in s.get("history", [])
               if h.get("top1") is not None]
        pts = [(f, t) for f, t in pts if f]
        if not pts:
            continue
        all_x += [f for f, _ in pts]
        ax.plot([f for f, _ in pts], [100 * t for _, t in pts], marker="o", ms=3,
                label=f"{name} ({s.get('model')})")
    for t in targets:
        ax.axhline(100 * t, ls="--", lw=0.8, color="gray")
        ax.annotate(f"target {t:.0%}", (0.01, 100 * t), xycoords=("axes fraction", "data"),
                    xytext=(0, 2), textcoords="offset points", fontsize=7, color="gray")
    if all_x:
        from matplotlib.ticker import NullFormatter
        ax.set_xscale("log")
        if max(all_x) / min(all_x) > 30:  # several decades: label the decades only
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no eval history", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("cumulative training FLOPs (3 x analytic forward x images, log)")
    ax.set_ylabel("eval top-1 (%)")
    ax.set_title(f"Top-1 vs training compute (Hernandez & Brown 2020)\n{label}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_flops_to_target(runs, targets, baseline, label, path) -> bool:
    """Grouped bars: training FLOPs to each target / baseline's (log y; < 1 = less compute).

    Draws nothing and returns False when there is no baseline or it reached no target.
    """
    if not baseline:
        return False
    usable = [t for t in targets if _target_record(runs[baseline], t)]
    rs = ratios(runs, baseline, usable)
    values = [r for row in rs.values() for r in row.values() if r]
    if not values:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    names = sorted(runs)
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        first = True
        for j, t in enumerate(usable):
            r = rs.get(name, {}).get(t)
            if r is None:
                continue
            x = j + (i - (len(names) - 1) / 2) * width
            ax.bar([x], [r], width=width * 0.95, color=f"C{i}",
                   label=f"{name} ({runs[name].get('model')})" if first else None)
            first = False
            ax.annotate(f"{r:.2f}x", (x, r), textcoords="offset points", xytext=(0, 2),
                        ha="center", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(min(values + [1.0]) / 2, max(values + [1.0]) * 2)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(usable)))
    ax.set_xticklabels([f"top-1 {t:.0%}" for t in usable])
    ax.legend(fontsize=8, loc="best")
    ax.set_ylabel(f"training FLOPs to target / {baseline}'s (log scale)")
    ax.set_title("Training compute to reach a top-1 target, relative to the baseline "
                 f"(below 1 = less)\n{label}", fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------


def _n(k: int, word: str) -> str:
    return f"{k} {word}" + ("" if k == 1 else "s")


def write_report(run_dirs: Sequence[str | pathlib.Path], out: str | pathlib.Path,
                 baseline: str = "resnet18", targets: Sequence[float] | None = None,
                 command: str | None = None, device: str | None = None
                 ) -> dict[str, pathlib.Path]:
    """Write report.md, report.json and the PNGs to ``out``; returns their paths.

    Args:
      run_dirs: run directories (those without summary.json are skipped, with a message).
      out: output folder (created).
      baseline: run directory name or model name of the FLOPs-to-target baseline.
      targets: top-1 targets (fractions); default: every target recorded in the runs.
      command: the command that produced the runs, quoted on the page.
      device: device label for the plots (default: "N x device_kind" from the summaries).
    """
    runs = load_runs(run_dirs)
    tgts = _targets(runs, targets)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for name, s in runs.items():
        groups.setdefault(dataset_of(s), {})[name] = s
    paths = {"markdown": out / "report.md", "json": out / "report.json"}
    md = [f"# Accuracy-complexity report ({_n(len(runs), 'run')}, "
          f"{_n(len(groups), 'dataset')})", ""]
    if command:
        md += ["Made by:", "", "```", command, "```", ""]
    bases: dict[str, str | None] = {}
    for ds, group in sorted(groups.items()):
        base = find_baseline(group, baseline)
        bases[ds] = base
        if base is None:
            print(f"[report] {ds}: no run named or of model {baseline!r}: ratios left out",
                  file=sys.stderr)
        label = plot_label(group, device)
        suffix = "" if len(groups) == 1 else f"_{ds}"
        md += [f"## {ds}" if len(groups) > 1 else f"Runs: {label}.", ""]
        if len(groups) > 1:
            md += [f"Runs: {label}.", ""]
        md += [f"Baseline for the FLOPs-to-target ratios: **{base or 'none'}**. Training "
               "FLOPs = 3 x analytic forward FLOPs x training images (Hernandez & Brown 2020; "
               "'XLA / 3xfwd' compares XLA's cost analysis of the compiled step). Latency: "
               "median forward pass (eval mode, float32, jit) on this machine. A ratio below "
               "1 means less training compute than the baseline to reach the same top-1.", "",
               markdown_table(group, tgts, base), ""]
        figs = {
            f"top1_vs_gmacs{suffix}": lambda p, g=group, lab=label: plot_top1_vs_gmacs(
                g, lab, p),
            f"top1_vs_latency{suffix}": lambda p, g=group, lab=label: plot_top1_vs_latency(
                g, lab, p),
            f"top1_vs_train_flops{suffix}": lambda p, g=group, lab=label:
                plot_top1_vs_train_flops(g, tgts, lab, p),
        }
        for key, draw in figs.items():
            paths[key] = out / f"{key}.png"
            draw(paths[key])
            md.append(f"![{key}]({key}.png)")
        key = f"flops_to_target{suffix}"
        if plot_flops_to_target(group, tgts, base, label, out / f"{key}.png"):
            paths[key] = out / f"{key}.png"
            md.append(f"![{key}]({key}.png)")
        else:
            (out / f"{key}.png").unlink(missing_ok=True)  # no stale plot from an earlier report
            md += ["", "(No FLOPs-to-target plot: "
                   + ("no baseline run" if base is None else
                      f"the baseline {base} reached none of the targets") + ".)"]
        md.append("")
    paths["markdown"].write_text("\n".join(md) + "\n")
    all_ratios = {n: {str(t): r for t, r in rs.items()}
                  for ds, b in bases.items() for n, rs in ratios(groups[ds], b, tgts).items()}
    report = {"baseline": (next(iter(bases.values())) if len(bases) == 1 else None),
              "baselines": bases, "targets": tgts, "command": command,
              # run name -> {target: FLOPs / its dataset's baseline's}; None without baselines
              "ratios": all_ratios or None,
              "runs": {n: {k: v for k, v in s.items() if k != "config"}
                       for n, s in runs.items()}}
    paths["json"].write_text(json.dumps(report, indent=2))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.report",
        description="Markdown tables + PNG plots of accuracy vs complexity, latency and "
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
