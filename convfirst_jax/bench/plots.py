"""The latency lab's figures (matplotlib, Agg backend; Lavin 2024, Sec. 2 figures).

1. :func:`efficiency_gap_plot` -- latency vs batch size (log-log): measured lines per
   implementation (median, p10-p90 band) above the ideal ops/peak line and the waterline(s).
2. :func:`waterline_plot` -- per layer of a model (or block): measured standalone latency vs
   its floor max(ops/peak, bytes/bandwidth), bars coloured by layer kind.
3. :func:`model_comparison_plot` -- latency vs top-1 (from training summaries) or vs GMACs.

Every figure carries the device, dtype, jax version and date.
"""

from __future__ import annotations

import math
import pathlib
from collections import OrderedDict
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402,F401
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

KIND_COLORS = {
    "full_conv": "#1f77b4", "pointwise": "#2ca02c", "grouped": "#17becf",
    "depthwise": "#d62728", "norm": "#9467bd", "activation": "#ff7f0e", "pool": "#8c564b",
    "linear": "#7f7f7f", "add": "#e377c2", "scale": "#bcbd22",
}
IMPL_STYLES = {"xla": ("#1f77b4", "o"), "pallas": ("#d62728", "s"),
               "reference": ("#2ca02c", "^"), "torch": ("#9467bd", "D")}


def stamp(env: dict[str, Any], dtypes: Sequence[str]) -> str:
    """"device · dtype · jax X · date" line for figure footers."""
    date = str(env.get("date", ""))[:10]
    return (f"{env.get('device_kind', '?')} ({env.get('platform', '?')}) · "
            f"{', '.join(dict.fromkeys(dtypes)) or '?'} · jax {env.get('jax_version', '?')} · "
            f"{date}")


def _finish(fig, env, dtypes, path) -> pathlib.Path:
    fig.text(0.5, 0.005, stamp(env, dtypes), ha="center", va="bottom", fontsize=8,
             color="#444444")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = pathlib.Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plain_log(axis) -> None:
    """Plain numbers (0.5, 20, 300) instead of 10^x mantissas on a log axis."""
    fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _grid(n: int, w: float = 5.6, h: float = 4.4, max_cols: int = 3):
    cols = min(max_cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(8.0, w * cols), h * rows + 0.9),
                             squeeze=False)
    flat = [a for row in axes for a in row]
    for a in flat[n:]:
        a.set_visible(False)
    return fig, flat[:n]


def efficiency_gap_plot(records: Sequence[dict[str, Any]], env: dict[str, Any],
                        path: str | pathlib.Path) -> pathlib.Path | None:
    """Latency vs batch size per (name, mode, dtype) panel; None when nothing was measured."""
    recs = [r for r in records
            if r.get("status") == "ok" and r.get("suite") in ("blocks", "models")]
    if not recs:
        return None
    groups: OrderedDict[tuple, list] = OrderedDict()
    for r in recs:
        groups.setdefault((r["name"], r["mode"], r["dtype"]), []).append(r)
    fig, axes = _grid(len(groups))
    for ax, ((name, mode, dtype), rs) in zip(axes, groups.items()):
        by_impl: OrderedDict[str, list] = OrderedDict()
        for r in rs:
            by_impl.setdefault(r["impl"], []).append(r)
        for impl, ir in by_impl.items():
            ir = sorted(ir, key=lambda r: r["batch_size"])
            b = [r["batch_size"] for r in ir]
            color, marker = IMPL_STYLES.get(impl, ("#333333", "x"))
            ax.plot(b, [r["median_s"] * 1e3 for r in ir], marker=marker, color=color,
                    label=f"{impl} (measured median)")
            ax.fill_between(b, [r["p10_s"] * 1e3 for r in ir], [r["p90_s"] * 1e3 for r in ir],
                            color=color, alpha=0.2, lw=0)
        floors: dict[int, dict] = {}
        for r in rs:
            floors.setdefault(r["batch_size"], r)
        b = sorted(floors)
        ax.plot(b, [floors[x]["ideal_s"] * 1e3 for x in b], "k--", lw=1.5,
                label="ideal: ops / peak")
        if all(floors[x].get("waterline_s") for x in b):
            ax.plot(b, [floors[x]["waterline_s"] * 1e3 for x in b], color="#555555", ls=":",
                    lw=2, label="waterline (unfused)")
        if all(floors[x].get("fused_floor_s") for x in b):
            ax.plot(b, [floors[x]["fused_floor_s"] * 1e3 for x in b], color="#888888",
                    ls="-.", lw=1.5, label="waterline (fused blocks)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(b)
        ax.set_xticklabels([str(x) for x in b])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        _plain_log(ax.yaxis)
        ax.set_xlabel("batch size (images)")
        ax.set_ylabel("latency per batch (ms)")
        ax.set_title(f"{name}\n{mode}, {dtype}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
    fig.suptitle("Efficiency gap (Lavin 2024): measured latency\nvs ideal (ops / peak) "
                 "and waterline", fontsize=11)
    return _finish(fig, env, [r["dtype"] for r in recs], path)


def waterline_plot(layer_records: Sequence[dict[str, Any]], env: dict[str, Any],
                   path: str | pathlib.Path,
                   summaries: dict[str, str] | None = None) -> pathlib.Path | None:
    """Per-layer measured latency (bars by kind) vs floor (black ticks), one panel per group."""
    recs = [r for r in layer_records if r.get("status") == "ok"
            and r.get("suite") == "layers" and r.get("kind") != "block"]
    if not recs:
        return None
    groups: OrderedDict[str, list] = OrderedDict()
    for r in recs:
        groups.setdefault(r.get("group", r["name"]), []).append(r)
    n = len(groups)
    widest = max(len(v) for v in groups.values())
    fig, axes = plt.subplots(n, 1, figsize=(min(26, max(11, 0.16 * widest + 6)), 4.8 * n + 0.6),
                             squeeze=False)
    for ax, (group, rs) in zip([a[0] for a in axes], groups.items()):
        xs = range(len(rs))
        meas = [r["median_s"] * 1e6 for r in rs]
        floor = [r["waterline_s"] * 1e6 for r in rs]
        colors = [KIND_COLORS.get(r["kind"], "#333333") for r in rs]
        ax.bar(xs, meas, color=colors, width=0.8)
        ax.scatter(xs, floor, marker="_", s=max(20, 900 / max(1, len(rs))), color="black",
                   linewidths=2, zorder=3)
        ax.set_yscale("log")
        _plain_log(ax.yaxis)
        ax.set_ylabel("latency (µs)")
        step = max(1, math.ceil(len(rs) / 60))
        ax.set_xticks(list(xs)[::step])
        ax.set_xticklabels([r["name"] for r in rs][::step], rotation=90, fontsize=6)
        ax.set_xlim(-0.6, len(rs) - 0.4)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        tot_m, tot_f = sum(meas), sum(floor)
        text = (f"Σ measured {tot_m / 1e3:.3g} ms, Σ floor (waterline) {tot_f / 1e3:.3g} ms, "
                f"ratio {tot_m / tot_f:.1f}×" if tot_f else "")
        if summaries and group in summaries:
            text += "\n" + summaries[group]
        ax.set_title(f"Waterline: {group} (batch {rs[0]['batch_size']}, {rs[0]['dtype']})\n"
                     + text, fontsize=10)
        kinds = list(dict.fromkeys(r["kind"] for r in rs))
        handles = [Patch(color=KIND_COLORS.get(k, "#333333"), label=f"{k} (measured)")
                   for k in kinds]
        handles.append(Line2D([], [], color="black", marker="_", ls="", markersize=12, mew=2,
                              label="floor: max(ops/peak, bytes/BW)"))
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0),
                  borderaxespad=0.0)
    return _finish(fig, env, [r["dtype"] for r in recs], path)


def model_comparison_plot(records: Sequence[dict[str, Any]], env: dict[str, Any],
                          path: str | pathlib.Path,
                          top1: dict[str, float] | None = None) -> pathlib.Path | None:
    """Inference latency vs top-1 (when known for the plotted models) or vs GMACs/image."""
    recs = [r for r in records if r.get("status") == "ok" and r.get("suite") == "models"
            and r.get("mode") == "inference"]
    if not recs:
        return None
    dtype = recs[0]["dtype"]
    recs = [r for r in recs if r["dtype"] == dtype or r["impl"] == "torch"]
    # One batch size for everyone: the largest measured for every (model, impl), else per-own.
    pairs: dict[tuple, set] = {}
    for r in recs:
        pairs.setdefault((r["name"], r["impl"]), set()).add(r["batch_size"])
    common = set.intersection(*pairs.values()) if pairs else set()
    chosen: dict[tuple, dict] = {}
    for r in recs:
        key = (r["name"], r["impl"])
        want = max(common) if common else max(pairs[key])
        if r["batch_size"] == want:
            chosen[key] = r
    top1 = top1 or {}
    use_top1 = any(k[0] in top1 for k in chosen)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    series: OrderedDict[str, list] = OrderedDict()
    for (name, impl), r in chosen.items():
        if use_top1 and name not in top1:
            continue
        series.setdefault(r.get("series") or f"{name} ({impl})", []).append(r)
    markers = "osD^v<>P*X"
    for i, (label, rs) in enumerate(series.items()):
        rs = sorted(rs, key=lambda r: r["median_s"])
        x = [r["median_s"] * 1e3 for r in rs]
        y = [top1[r["name"]] if use_top1 else r["macs"] / r["batch_size"] / 1e9 for r in rs]
        ax.plot(x, y, marker=markers[i % len(markers)], ls="-", label=label)
        for xi, yi, r in zip(x, y, rs):
            ax.annotate(r["name"], (xi, yi), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    batch = next(iter(chosen.values()))["batch_size"]
    ax.set_xscale("log")
    _plain_log(ax.xaxis)
    ax.set_xlabel(f"inference latency at batch {batch} (ms, median)"
                  if common else "inference latency at each model's largest batch (ms)")
    ax.set_ylabel("top-1 accuracy (%)" if use_top1 else "GMACs per image")
    if not use_top1:
        ax.set_yscale("log")
        _plain_log(ax.yaxis)
    ax.set_title("Model comparison: latency vs " + ("top-1" if use_top1 else "GMACs"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, env, [dtype], path)
