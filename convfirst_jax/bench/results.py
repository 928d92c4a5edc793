"""Writers for the latency lab's results: JSON (everything), CSV (flat rows), markdown."""

from __future__ import annotations

import csv
import json
import math
import pathlib
from typing import Any, Iterable, Sequence

# CSV columns, in order (raw samples stay in the JSON).
CSV_FIELDS: tuple[str, ...] = (
    "suite", "name", "impl", "mode", "dtype", "batch_size", "resolution", "kind", "group",
    "block", "bound",
    "status", "median_s", "p10_s", "p90_s", "q25_s", "q75_s", "iqr_s", "min_s", "mean_s",
    "repeats", "number", "warmup", "buffers", "compile_s", "first_call_s", "flops", "macs",
    "bytes", "params", "ideal_s", "waterline_s", "fused_floor_s", "efficiency",
    "efficiency_gap_s", "latency_over_waterline", "latency_over_fused_floor", "images_per_s",
    "max_abs_diff_vs_xla", "top1", "note")


def fmt_time(seconds: float | None) -> str:
    """1.234e-5 -> '12.3 µs' (µs, ms or s, three significant digits)."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "–"
    a = abs(seconds)
    if a < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if a < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def _fmt_ratio(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f} %" if pct else f"{x:.2f}×"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item):  # numpy / jax scalars
        return _jsonable(obj.item())
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def write_json(path: str | pathlib.Path, payload: dict[str, Any]) -> pathlib.Path:
    """The whole run: environment, ceilings, every record with its raw samples."""
    path = pathlib.Path(path)
    path.write_text(json.dumps(_jsonable(payload), indent=1) + "\n")
    return path


def write_csv(path: str | pathlib.Path, records: Iterable[dict[str, Any]]) -> pathlib.Path:
    """One row per record (samples omitted; any extra keys are dropped)."""
    path = pathlib.Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    return path


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < right_from else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(env: dict[str, Any], ceilings: dict[str, dict[str, Any]],
                    records: Sequence[dict[str, Any]], *, title: str,
                    notes: Sequence[str] = (), figures: Sequence[str] = ()) -> str:
    """results.md: environment, ceilings, the measurement table(s), skipped runs, notes."""
    out = [f"# {title}", ""]
    out.append(_table(["", ""], [
        ["device", f"{env.get('device_kind')} ({env.get('platform')})"],
        ["jax", f"{env.get('jax_version')} (jaxlib {env.get('jaxlib_version')})"],
        ["date (UTC)", env.get("date", "")],
        ["command", f"`{env.get('command_line', '')}`"],
    ], right_from=9))
    out += ["", "## Device ceilings", ""]
    rows = []
    for dt, c in ceilings.items():
        d = c.get("details", {})
        ref = ""
        if d.get("datasheet_peak_flops"):
            ref = (f"{d['datasheet']}: {d['datasheet_peak_flops'] / 1e12:.0f} TFLOP/s, "
                   f"{d['datasheet_bandwidth'] / 1e9:.0f} GB/s")
        elif c.get("source") == "datasheet":
            ref = d.get("datasheet", "")
        rows.append([dt, f"{c['peak_flops'] / 1e12:.3g}", f"{c['bandwidth'] / 1e9:.3g}",
                     f"{c['peak_flops'] / c['bandwidth']:.3g}", c["source"], ref or "–"])
    out.append(_table(["dtype", "peak TFLOP/s", "bandwidth GB/s", "ridge FLOP/B", "source",
                       "datasheet"], rows, right_from=1))
    out += ["", "Efficiency = (ops / latency) / peak; gap = latency − ops/peak; waterline = "
            "Σ max(ops/peak, bytes/bandwidth) over the unfused ops; fused floor = the same with "
            "each conv-first block costed as one kernel, max(2 × MACs / peak, (x + out + "
            "weights) / bandwidth) (Lavin 2024, Sec. 2). Latencies are medians (p10–p90 "
            "spread) per call.", ""]

    ok = [r for r in records if r.get("status") == "ok"]
    main = [r for r in ok if r.get("suite") in ("blocks", "models")]
    if main:
        out += ["## Measurements", ""]
        rows = []
        for r in main:
            rows.append([
                r["name"], r["impl"], r["mode"], r["dtype"], r["batch_size"],
                fmt_time(r["median_s"]), f"{fmt_time(r['p10_s'])} – {fmt_time(r['p90_s'])}",
                fmt_time(r.get("ideal_s")), fmt_time(r.get("waterline_s")),
                fmt_time(r.get("fused_floor_s")), _fmt_ratio(r.get("efficiency"), pct=True),
                fmt_time(r.get("efficiency_gap_s")), _fmt_ratio(r.get("latency_over_waterline")),
                f"{r.get('images_per_s', 0):,.0f}", f"{r.get('compile_s', 0):.2f} s"])
        out.append(_table(["name", "impl", "mode", "dtype", "batch", "median", "p10 – p90",
                           "ideal", "waterline", "fused floor", "efficiency", "gap",
                           "× waterline", "img/s", "compile"], rows, right_from=4))
        diffs = [r for r in main if r.get("max_abs_diff_vs_xla") is not None]
        if diffs:
            out += ["", "Numerical cross-check (max |out − out_xla| on the first input): " +
                    "; ".join(f"{r['name']} {r['impl']} b{r['batch_size']}: "
                              f"{r['max_abs_diff_vs_xla']:.2e}" for r in diffs
                              if r["impl"] != "xla")]
        out.append("")

    blocks = [r for r in ok if r.get("suite") == "layers" and r.get("kind") == "block"]
    layers = [r for r in ok if r.get("suite") == "layers" and r.get("kind") != "block"]
    if blocks:
        out += ["## Per block (sum of standalone layer timings)", ""]
        out.append(_table(
            ["group", "block", "batch", "Σ measured", "Σ waterline", "fused floor",
             "× waterline", "× fused floor"],
            [[r.get("group", ""), r["name"], r["batch_size"], fmt_time(r["median_s"]),
              fmt_time(r["waterline_s"]), fmt_time(r.get("fused_floor_s")),
              _fmt_ratio(r.get("latency_over_waterline")),
              _fmt_ratio(r.get("latency_over_fused_floor"))] for r in blocks], right_from=2))
        out.append("")
    if layers:
        out += ["## Per layer (each op timed standalone)", ""]
        out.append(_table(
            ["group", "layer", "kind", "batch", "median", "floor", "bound", "× floor",
             "efficiency"],
            [[r.get("group", ""), r["name"], r["kind"], r["batch_size"], fmt_time(r["median_s"]),
              fmt_time(r["waterline_s"]), r.get("bound", ""),
              _fmt_ratio(r.get("latency_over_waterline")),
              _fmt_ratio(r.get("efficiency"), pct=True)] for r in layers], right_from=3))
        out.append("")

    skipped = [r for r in records if r.get("status") != "ok"]
    if skipped or notes:
        out += ["## Not measured / notes", ""]
        seen = set()
        for r in skipped:
            line = f"- {r.get('name')} [{r.get('impl')}, {r.get('dtype')}]: {r.get('note')}"
            key = (r.get("name"), r.get("impl"), r.get("dtype"), r.get("note"))
            if key not in seen:
                seen.add(key)
                out.append(line)
        out += [f"- {n}" for n in notes if n not in {r.get("note") for r in skipped}]
        out.append("")
    if figures:
        out += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(out)


def write_markdown(path: str | pathlib.Path, text: str) -> pathlib.Path:
    path = pathlib.Path(path)
    path.write_text(text)
    return path
