"""Cost of one unfused XLA-level op: MACs, FLOPs, parameters and bytes moved.

This is the per-layer bookkeeping behind Lavin 2024, Sec. 2 ("arithmetic complexity" and
"memory traffic" of a kernel) and the waterline analysis: every op reads its inputs from device
memory and writes its output back, so its arithmetic intensity is ``flops / bytes_total``.

Conventions
-----------
MACs (multiply-accumulates) count convolutions and linear layers only:
``H_out * W_out * C_out * k * k * C_in / groups`` per image for a conv and ``in * out`` for a
linear layer, every kernel tap counted (zero padding included), biases not counted. Norms,
activations, pools, residual adds and layer scales contribute no MACs. This is torchvision's
published "_ops" convention (ConvNeXt-T 4.456 G, ResNet-50 4.089 G); timm's published GMACs come
from fvcore, which also counts norms and pools (:attr:`ComplexityTable.fvcore_macs`, ConvNeXt-T
4.47 G).

FLOPs are ``2 * MACs`` for convs / linears plus an element-wise count for everything else. The
per-element counts below are the ones XLA's ``HloCostAnalysis`` charges for the Flax NNX ops of
the eval-mode forward (measured with ``jax.jit(f).lower(x).compile().cost_analysis()`` on
jax 0.10.2, CPU): XLA counts one flop per element-wise arithmetic HLO op and puts ``exp``,
``rsqrt``, ``tanh`` etc. in a separate ``transcendentals`` count, which we keep in
:attr:`LayerCost.transcendentals` (so ``flops`` never includes transcendentals).

================  =========================================  ==============================
op                flops                                      transcendentals
================  =========================================  ==============================
conv / linear     2 per MAC (+1 per output element if bias)  0
LayerNorm         8 per element + 2 per normalised row       1 per row (rsqrt)
                  (two-pass: mean, x - mean, square, var,
                  normalise, scale, shift)
BatchNorm (eval)  3 per element + 2 per channel              1 per channel (rsqrt)
                  ((x - mean) * (gamma * rsqrt(var + eps))
                  + beta; a folded affine would be 2)
relu              1 per element                              0
silu              4 per element (neg, add, div, mul)         1 per element (exp)
gelu (exact erf)  64 per element (chlo.erf is lowered to a   1 per element
                  rational polynomial + select)
gelu_tanh         8 per element                              1 per element (tanh)
max pool          k*k - 1 per output element                 0
global avg pool   1 per input element                        0
residual add      1 per element                              0
layer scale       1 per element                              0
================  =========================================  ==============================

The element-wise counts are a calibrated convention, not an invariant of XLA: how XLA fuses a
reduction moves its count a little with the shape (a standalone LayerNorm measured 7 to 9.25
flops/element across shapes), and other backends lower ``erf`` differently. Whole-model totals
agree with XLA's cost analysis to within 1 % (0.1 to 0.6 % measured at 64 and 224 px;
tests/test_complexity.py), because convolutions and matmuls dominate. XLA only charges conv
taps that read real input, never the zero padding; ``count_padding=False`` reproduces that for
the cross-check.

Bytes are counted for the UNFUSED op sequence: each op reads every input tensor and writes its
output tensor once (``elements * dtype_bytes``), and reads its parameters once
(``weight_bytes = params * dtype_bytes``; BatchNorm running statistics are buffers, not
parameters, and are left out as in timm's parameter counts).
"""

from __future__ import annotations

import dataclasses

LAYER_KINDS: tuple[str, ...] = ("full_conv", "pointwise", "grouped", "depthwise", "norm",
                                "activation", "pool", "linear", "add", "scale")

Shape = tuple[int, int, int]

# XLA flops / transcendentals per element of each activation (see the module docstring).
ACTIVATION_FLOPS: dict[str, int] = {"relu": 1, "silu": 4, "gelu": 64, "gelu_tanh": 8}
ACTIVATION_TRANSCENDENTALS: dict[str, int] = {"relu": 0, "silu": 1, "gelu": 1, "gelu_tanh": 1}
LAYERNORM_FLOPS_PER_ELEMENT = 8
LAYERNORM_FLOPS_PER_ROW = 2
BATCHNORM_FLOPS_PER_ELEMENT = 3
BATCHNORM_FLOPS_PER_CHANNEL = 2


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """Cost of one unfused op for ``batch`` images (weights counted once).

    Attributes:
      name: module path, e.g. ``"stages.2.blocks.3.conv_dw"``.
      kind: one of :data:`LAYER_KINDS`.
      block: enclosing residual block (``"stages.1.blocks.0"``), or None outside blocks.
      in_shape / out_shape: per-image (H, W, C) of the (first) input and of the output.
      kernel_size, stride, groups, padding: window geometry for convs and pools (1, 1, 1, 0
        for ops without a window).
      macs, flops, params, transcendentals: see the module docstring.
      act_bytes_read / act_bytes_written: activation traffic of the unfused op.
      weight_bytes: ``params * dtype_bytes``.
      op: what the op computes, for rebuilding it standalone: "conv", "dense", "layernorm",
        "batchnorm", an activation name, "max", "mean", "add" or "mul".
      bias: whether a conv / linear adds a bias.
    """

    name: str
    kind: str
    block: str | None
    in_shape: Shape
    out_shape: Shape
    kernel_size: int
    stride: int
    groups: int
    macs: int
    flops: int
    params: int
    act_bytes_read: int
    act_bytes_written: int
    weight_bytes: int
    padding: int = 0
    transcendentals: int = 0
    op: str = ""
    bias: bool = False

    def __post_init__(self):
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"unknown layer kind {self.kind!r}; valid: {', '.join(LAYER_KINDS)}")

    @property
    def bytes_total(self) -> int:
        """Activation bytes read + written + weight bytes of the unfused op."""
        return self.act_bytes_read + self.act_bytes_written + self.weight_bytes

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, flops per byte of device-memory traffic (roofline x-axis)."""
        return self.flops / self.bytes_total if self.bytes_total else 0.0


@dataclasses.dataclass(frozen=True)
class CostTotals:
    """Sums over a list of :class:`LayerCost` (a block, or a whole model)."""

    macs: int
    flops: int
    params: int
    act_bytes_read: int
    act_bytes_written: int
    weight_bytes: int
    transcendentals: int

    @classmethod
    def of(cls, layers) -> "CostTotals":
        layers = list(layers)
        return cls(*(sum(getattr(l, f) for l in layers) for f in
                     ("macs", "flops", "params", "act_bytes_read", "act_bytes_written",
                      "weight_bytes", "transcendentals")))

    @property
    def bytes(self) -> int:
        return self.act_bytes_read + self.act_bytes_written + self.weight_bytes

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else 0.0


def conv_output_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    """Output length of a strided, zero-padded window along one spatial axis."""
    out = (size + 2 * padding - kernel_size) // stride + 1
    if out < 1:
        raise ValueError(
            f"a {kernel_size}x{kernel_size}/{stride} window with padding {padding} does not fit "
            f"a {size}-pixel feature map; use a larger input resolution")
    return out


def valid_taps(size: int, kernel_size: int, stride: int, padding: int) -> int:
    """Kernel taps that land inside the input, summed over output positions (one axis).

    Equals ``out * kernel_size`` when there is no padding. XLA's cost analysis only charges
    these taps (multiplications with the zero padding are not counted), so the cross-check
    against XLA uses this count (``model_complexity(..., count_padding=False)``).
    """
    out = conv_output_size(size, kernel_size, stride, padding)
    return sum(sum(1 for t in range(kernel_size) if 0 <= o * stride - padding + t < size)
               for o in range(out))


class LayerRecorder:
    """Appends the :class:`LayerCost` of each op of a forward pass, in execution order."""

    def __init__(self, batch_size: int, dtype_bytes: int, count_padding: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dtype_bytes not in (1, 2, 4, 8):
            raise ValueError(f"dtype_bytes must be 1, 2, 4 or 8, got {dtype_bytes}")
        self.batch = batch_size
        self.dtype_bytes = dtype_bytes
        self.count_padding = count_padding
        self.layers: list[LayerCost] = []

    def _elements(self, shape: Shape) -> int:
        h, w, c = shape
        return self.batch * h * w * c

    def _add(self, name, kind, block, in_shape, out_shape, *, macs=0, flops, params=0,
             n_inputs=1, transcendentals=0, kernel_size=1, stride=1, groups=1, padding=0,
             op="", bias=False) -> Shape:
        self.layers.append(LayerCost(
            name=name, kind=kind, block=block, in_shape=tuple(in_shape),
            out_shape=tuple(out_shape), kernel_size=kernel_size, stride=stride, groups=groups,
            macs=int(macs), flops=int(flops), params=int(params),
            act_bytes_read=n_inputs * self._elements(in_shape) * self.dtype_bytes,
            act_bytes_written=self._elements(out_shape) * self.dtype_bytes,
            weight_bytes=int(params) * self.dtype_bytes, padding=padding,
            transcendentals=int(transcendentals), op=op, bias=bias))
        return tuple(out_shape)

    def conv(self, name: str, block: str | None, shape: Shape, out_channels: int, *,
             kernel_size: int, stride: int = 1, padding: int = 0, groups: int = 1,
             bias: bool = False, kind: str | None = None) -> Shape:
        """A 2-D convolution: MACs = H_out W_out C_out k^2 C_in / groups per image."""
        h, w, c = shape
        if c % groups or out_channels % groups:
            raise ValueError(
                f"{name}: channels {c}->{out_channels} not divisible by groups={groups}")
        ho = conv_output_size(h, kernel_size, stride, padding)
        wo = conv_output_size(w, kernel_size, stride, padding)
        if self.count_padding:
            taps = ho * wo * kernel_size * kernel_size
        else:
            taps = (valid_taps(h, kernel_size, stride, padding)
                    * valid_taps(w, kernel_size, stride, padding))
        macs = self.batch * taps * out_channels * (c // groups)
        out = (ho, wo, out_channels)
        if kind is None:
            if groups == 1:
                kind = "pointwise" if kernel_size == 1 else "full_conv"
            elif groups == c == out_channels:
                kind = "depthwise"
            else:
                kind = "grouped"
        params = (kernel_size * kernel_size * (c // groups) * out_channels
                  + (out_channels if bias else 0))
        flops = 2 * macs + (self._elements(out) if bias else 0)
        return self._add(name, kind, block, shape, out, macs=macs, flops=flops, params=params,
                         kernel_size=kernel_size, stride=stride, groups=groups, padding=padding,
                         op="conv", bias=bias)

    def dense(self, name: str, block: str | None, shape: Shape, out_features: int, *,
              bias: bool = True, kind: str = "pointwise") -> Shape:
        """A Linear layer applied per pixel (``kind="pointwise"``) or as the head (``"linear"``)."""
        h, w, c = shape
        out = (h, w, out_features)
        macs = self._elements(out) * c
        flops = 2 * macs + (self._elements(out) if bias else 0)
        params = c * out_features + (out_features if bias else 0)
        return self._add(name, kind, block, shape, out, macs=macs, flops=flops, params=params,
                         op="dense", bias=bias)

    def norm(self, name: str, block: str | None, shape: Shape, norm: str) -> Shape:
        """LayerNorm over channels, or eval-mode BatchNorm (per-channel affine of running stats)."""
        h, w, c = shape
        n = self._elements(shape)
        if norm == "layernorm":
            rows = n // c
            flops = LAYERNORM_FLOPS_PER_ELEMENT * n + LAYERNORM_FLOPS_PER_ROW * rows
            trans = rows
        elif norm == "batchnorm":
            flops = BATCHNORM_FLOPS_PER_ELEMENT * n + BATCHNORM_FLOPS_PER_CHANNEL * c
            trans = c
        else:
            raise ValueError(f"{name}: unknown norm {norm!r}; valid: layernorm, batchnorm")
        return self._add(name, "norm", block, shape, shape, flops=flops, params=2 * c,
                         transcendentals=trans, op=norm)

    def activation(self, name: str, block: str | None, shape: Shape, fn: str) -> Shape:
        if fn not in ACTIVATION_FLOPS:
            raise ValueError(f"{name}: unknown activation {fn!r}; valid: "
                             f"{', '.join(ACTIVATION_FLOPS)}")
        n = self._elements(shape)
        return self._add(name, "activation", block, shape, shape,
                         flops=ACTIVATION_FLOPS[fn] * n,
                         transcendentals=ACTIVATION_TRANSCENDENTALS[fn] * n, op=fn)

    def max_pool(self, name: str, block: str | None, shape: Shape, *, kernel_size: int,
                 stride: int, padding: int) -> Shape:
        h, w, c = shape
        out = (conv_output_size(h, kernel_size, stride, padding),
               conv_output_size(w, kernel_size, stride, padding), c)
        return self._add(name, "pool", block, shape, out,
                         flops=(kernel_size * kernel_size - 1) * self._elements(out),
                         kernel_size=kernel_size, stride=stride, padding=padding, op="max")

    def global_avg_pool(self, name: str, block: str | None, shape: Shape) -> Shape:
        h, w, c = shape
        return self._add(name, "pool", block, shape, (1, 1, c), flops=self._elements(shape),
                         kernel_size=h, stride=h, op="mean")

    def add(self, name: str, block: str | None, shape: Shape) -> Shape:
        """Residual add: reads two tensors, writes one."""
        return self._add(name, "add", block, shape, shape, flops=self._elements(shape),
                         n_inputs=2, op="add")

    def scale(self, name: str, block: str | None, shape: Shape) -> Shape:
        """Per-channel layer scale (ConvNeXt's gamma): one learned value per channel."""
        return self._add(name, "scale", block, shape, shape, flops=self._elements(shape),
                         params=shape[2], op="mul")
