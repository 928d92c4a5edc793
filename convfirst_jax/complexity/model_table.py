"""The README model table: every registered model's layout, parameters and GMACs at 224 px."""

from __future__ import annotations

import pathlib

from convfirst_jax.complexity.networks import model_complexity
from convfirst_jax.specs import MODEL_SPECS, FourStageNetSpec

MODEL_TABLE_START = "<!-- model-table:start -->"
MODEL_TABLE_END = "<!-- model-table:end -->"


def _block_description(spec) -> str:
    if isinstance(spec, FourStageNetSpec):
        conv = "dw" if spec.group_width == 1 else f"gw{spec.group_width}"
        norm = "LN" if spec.norm == "layernorm" else "BN"
        return f"{spec.kernel_size}x{spec.kernel_size} {conv}, {norm}, {spec.activation}"
    return spec.block


def _dims(spec) -> tuple[int, ...]:
    if isinstance(spec, FourStageNetSpec):
        return spec.dims
    expansion = 1 if spec.block == "basic" else 4
    return tuple(spec.width * 2 ** i * expansion for i in range(4))


def model_table_rows(resolution: int = 224, num_classes: int = 1000) -> list[dict]:
    """One dict per registered model (registry order): family, depths, dims, params, GMACs."""
    rows = []
    for name, spec in MODEL_SPECS.items():
        t = model_complexity(spec, resolution=resolution, num_classes=num_classes)
        family = spec.family if isinstance(spec, FourStageNetSpec) else "resnet"
        depths = spec.depths if isinstance(spec, FourStageNetSpec) else spec.layers
        rows.append({"model": name, "family": family, "block": _block_description(spec),
                     "depths": list(depths), "dims": list(_dims(spec)), "params": t.params,
                     "macs": t.macs, "fvcore_macs": t.fvcore_macs, "flops": t.flops})
    return rows


def model_table_markdown(resolution: int = 224, num_classes: int = 1000) -> str:
    """Markdown table of every registered model (the README's model table)."""
    lines = [f"| model | family | block | depths | dims | params (M) | GMACs @ {resolution} "
             f"| GMACs @ {resolution}, timm/fvcore |",
             "|---|---|---|---|---|---:|---:|---:|"]
    for r in model_table_rows(resolution, num_classes):
        depths = "-".join(map(str, r["depths"]))
        dims = "-".join(map(str, r["dims"]))
        lines.append(f"| `{r['model']}` | {r['family']} | {r['block']} | {depths} | {dims} | "
                     f"{r['params'] / 1e6:.2f} | {r['macs'] / 1e9:.2f} | "
                     f"{r['fvcore_macs'] / 1e9:.2f} |")
    lines += ["", f"GMACs: convolutions and linear layers only, every kernel tap counted, one "
              f"{resolution}x{resolution} image. timm/fvcore: the convention of timm's published "
              "numbers, which also counts LayerNorm (5/element), BatchNorm (2/element) and "
              "average pooling (1/element)."]
    return "\n".join(lines)


def update_readme(path: str | pathlib.Path, table: str | None = None,
                  start_marker: str = MODEL_TABLE_START, end_marker: str = MODEL_TABLE_END) -> bool:
    """Rewrite the text between two markers of a README (default: the model table); True if it
    changed. Other generated tables (``scripts/kernel_table.py``) pass their own markers.

    Raises ValueError when the file lacks either marker (or has them out of order).
    """
    path = pathlib.Path(path)
    text = path.read_text()
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < 0 or end < start:
        raise ValueError(
            f"{path} has no generated-table region; add the two lines {start_marker} and "
            f"{end_marker} where the table should go")
    table = model_table_markdown() if table is None else table
    head = text[:start + len(start_marker)]
    new = head + "\n" + table.strip("\n") + "\n" + text[end:]
    if new == text:
        return False
    path.write_text(new)
    return True
