"""The per-layer complexity table of one model, its totals and its text renderings."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from functools import cached_property

from convfirst_jax.complexity.costs import CostTotals, LayerCost

ROW_FIELDS: tuple[str, ...] = (
    "name", "kind", "block", "in_shape", "out_shape", "kernel_size", "stride", "groups",
    "padding", "macs", "flops", "transcendentals", "params", "act_bytes_read",
    "act_bytes_written", "weight_bytes", "bytes_total", "intensity")


def _shape_str(shape) -> str:
    return "x".join(str(d) for d in shape)


def format_count(n: float) -> str:
    """1234567 -> '1.23M' (K, M, G, T suffixes; small numbers verbatim)."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return f"{n:g}"


@dataclasses.dataclass(frozen=True)
class ComplexityTable:
    """Unfused per-op costs of a model's eval-mode forward pass (Lavin 2024, Sec. 2).

    Attributes:
      model: registry name of the model.
      resolution: input height = width in pixels.
      batch_size: number of images every count is for (weights counted once).
      dtype_bytes: bytes per activation / weight element.
      num_classes: width of the classifier head.
      count_padding: whether conv MACs include taps that land on zero padding (the timm /
        fvcore convention, default) or only taps inside the image (XLA's convention).
      layers: one :class:`LayerCost` per op, in execution order.
    """

    model: str
    resolution: int
    batch_size: int
    dtype_bytes: int
    num_classes: int
    count_padding: bool
    layers: tuple[LayerCost, ...]

    @cached_property
    def total(self) -> CostTotals:
        return CostTotals.of(self.layers)

    @property
    def macs(self) -> int:
        return self.total.macs

    @property
    def flops(self) -> int:
        return self.total.flops

    @property
    def params(self) -> int:
        return self.total.params

    @property
    def transcendentals(self) -> int:
        return self.total.transcendentals

    @property
    def bytes(self) -> int:
        return self.total.bytes

    @property
    def fvcore_macs(self) -> int:
        """MACs as timm publishes them (fvcore ``FlopCountAnalysis``, one "flop" = one MAC).

        fvcore counts convs and linears (bias excluded) like :attr:`macs`, and in addition
        LayerNorm 5 per element (affine), eval BatchNorm 2 per element and adaptive average
        pooling 1 per input element; activations, adds, muls and max pooling are ignored. This
        is why timm lists ConvNeXt-T at 4.47 GMACs while its convs + linears are 4.456 G.
        Only meaningful with ``count_padding=True`` (fvcore counts every tap).
        """
        extra = 0
        for l in self.layers:
            n = l.act_bytes_read // self.dtype_bytes
            if l.op == "layernorm":
                extra += 5 * n
            elif l.op == "batchnorm":
                extra += 2 * n
            elif l.op == "mean":
                extra += n
        return self.macs + extra

    @cached_property
    def blocks(self) -> "OrderedDict[str, list[LayerCost]]":
        """Layers grouped by enclosing conv-first / residual block, in execution order."""
        groups: OrderedDict[str, list[LayerCost]] = OrderedDict()
        for layer in self.layers:
            if layer.block is not None:
                groups.setdefault(layer.block, []).append(layer)
        return groups

    def to_rows(self) -> list[dict]:
        """One JSON/CSV-friendly dict per layer (shapes as 'HxWxC' strings, block '' if none)."""
        rows = []
        for layer in self.layers:
            row = {}
            for f in ROW_FIELDS:
                v = getattr(layer, f)
                if f in ("in_shape", "out_shape"):
                    v = _shape_str(v)
                elif f == "block":
                    v = v or ""
                elif f == "intensity":
                    v = round(v, 4)
                row[f] = v
            rows.append(row)
        return rows

    def totals_row(self) -> dict:
        t = self.total
        return {"name": "total", "macs": t.macs, "flops": t.flops,
                "transcendentals": t.transcendentals, "params": t.params,
                "act_bytes_read": t.act_bytes_read, "act_bytes_written": t.act_bytes_written,
                "weight_bytes": t.weight_bytes, "bytes_total": t.bytes,
                "intensity": round(t.intensity, 4)}

    def summary_line(self) -> str:
        return (f"{self.model} @ {self.resolution}px, batch {self.batch_size}, "
                f"{self.dtype_bytes} B/element: params {self.params:,} "
                f"({self.params / 1e6:.2f} M), MACs {self.macs:,} ({self.macs / 1e9:.3f} G), "
                f"FLOPs {self.flops:,} ({self.flops / 1e9:.3f} G), bytes {self.bytes:,} "
                f"({self.bytes / 2**20:.1f} MiB unfused)")

    def _table_cells(self) -> tuple[list[str], list[list[str]]]:
        header = ["name", "kind", "in -> out", "MACs", "FLOPs", "params", "act read",
                  "act written", "weight bytes", "flops/byte"]
        body = []
        for l in self.layers:
            body.append([l.name, l.kind, f"{_shape_str(l.in_shape)} -> {_shape_str(l.out_shape)}",
                         format_count(l.macs), format_count(l.flops), format_count(l.params),
                         format_count(l.act_bytes_read), format_count(l.act_bytes_written),
                         format_count(l.weight_bytes), f"{l.intensity:.2f}"])
        t = self.total
        body.append(["total", "", "", format_count(t.macs), format_count(t.flops),
                     format_count(t.params), format_count(t.act_bytes_read),
                     format_count(t.act_bytes_written), format_count(t.weight_bytes),
                     f"{t.intensity:.2f}"])
        return header, body

    def to_markdown(self) -> str:
        """GitHub markdown table of every layer plus a totals row."""
        header, body = self._table_cells()
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)

    def to_text(self) -> str:
        """Fixed-width plain-text table (what the CLI prints by default)."""
        header, body = self._table_cells()
        rows = [header] + body
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

        def fmt(r):
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths)))
        sep = "-" * len(fmt(header))
        return "\n".join([fmt(header), sep] + [fmt(r) for r in body[:-1]] + [sep, fmt(body[-1])])
