"""Analytic layer tables of every registered architecture, built from ``convfirst_jax.specs``.

Each walker mirrors the eval-mode forward pass of the Flax model op by op (unfused, in execution
order). Layer names are the Flax module paths of ``convfirst_jax.models`` (timm-like:
``stem.conv``, ``stages.1.downsample.conv``, ``stages.2.blocks.3.conv_dw``, ``layers.2.1.conv2``,
``head.fc``), so every row with parameters matches a module of the real model; parameter-free
ops get a descriptive last component (``.act``, ``.add``, ``head.global_pool``, ``maxpool``).
"""

from __future__ import annotations

from convfirst_jax.complexity.costs import LayerCost, LayerRecorder, Shape
from convfirst_jax.complexity.table import ComplexityTable
from convfirst_jax.specs import (ConvFirstBlockConfig, FourStageNetSpec, ModelSpec, ResNetSpec,
                                  get_spec)


def conv_first_block_layers(rec: LayerRecorder, prefix: str, shape: Shape,
                            cfg: ConvFirstBlockConfig) -> Shape:
    """Ops of one conv-first block (Lavin 2024, Sec. 3; Liu et al. 2022, Fig. 4).

    ConvNeXt (LayerNorm): conv_dw(+b) -> norm -> fc1(+b) -> act -> fc2(+b) -> gamma -> add.
    ConvFirst (BatchNorm): conv_dw -> norm -> fc1 -> fc1_norm -> act -> fc2 -> fc2_norm -> add.
    """
    c = cfg.channels
    if shape[2] != c:
        raise ValueError(f"{prefix}: block expects {c} channels, got input shape {shape}")
    k = cfg.kernel_size
    y = rec.conv(f"{prefix}.conv_dw", prefix, shape, c, kernel_size=k, padding=k // 2,
                 groups=c // cfg.group_width, bias=cfg.conv_bias)
    y = rec.norm(f"{prefix}.norm", prefix, y, cfg.norm)
    h = rec.dense(f"{prefix}.fc1", prefix, y, cfg.hidden, bias=cfg.mlp_bias)
    if cfg.norm == "batchnorm":
        h = rec.norm(f"{prefix}.fc1_norm", prefix, h, "batchnorm")
    h = rec.activation(f"{prefix}.act", prefix, h, cfg.activation)
    z = rec.dense(f"{prefix}.fc2", prefix, h, c, bias=cfg.mlp_bias)
    if cfg.norm == "batchnorm":
        z = rec.norm(f"{prefix}.fc2_norm", prefix, z, "batchnorm")
    if cfg.layer_scale_init is not None:
        z = rec.scale(f"{prefix}.gamma", prefix, z)
    return rec.add(f"{prefix}.add", prefix, z)


def _convfirst_net_layers(rec: LayerRecorder, spec: FourStageNetSpec, resolution: int,
                          num_classes: int) -> None:
    """ConvNeXt / ConvFirstNet macro design: patchify stem, 4 stages, pool -> norm -> fc."""
    norm, stem_bias = spec.norm, spec.stem_bias
    s = spec.stem_size
    x: Shape = (resolution, resolution, 3)
    x = rec.conv("stem.conv", None, x, spec.dims[0], kernel_size=s, stride=s,
                 bias=stem_bias)
    x = rec.norm("stem.norm", None, x, norm)
    for i, (depth, dim) in enumerate(zip(spec.depths, spec.dims)):
        if i > 0:
            # Both families: the 2x2 downsample conv has a bias (nothing normalises after it).
            x = rec.norm(f"stages.{i}.downsample.norm", None, x, norm)
            x = rec.conv(f"stages.{i}.downsample.conv", None, x, dim, kernel_size=2, stride=2,
                         bias=True)
        cfg = spec.block_config(i)
        for j in range(depth):
            x = conv_first_block_layers(rec, f"stages.{i}.blocks.{j}", x, cfg)
    x = rec.global_avg_pool("head.global_pool", None, x)
    x = rec.norm("head.norm", None, x, norm)
    rec.dense("head.fc", None, x, num_classes, bias=True, kind="linear")


def _resnet_layers(rec: LayerRecorder, spec: ResNetSpec, resolution: int,
                   num_classes: int) -> None:
    """ResNet v1.5 (He et al. 2016; stride on the 3x3 of the bottleneck), timm layout."""
    w = spec.width
    x: Shape = (resolution, resolution, 3)
    x = rec.conv("conv1", None, x, w, kernel_size=7, stride=2, padding=3)
    x = rec.norm("bn1", None, x, "batchnorm")
    x = rec.activation("act1", None, x, "relu")
    x = rec.max_pool("maxpool", None, x, kernel_size=3, stride=2, padding=1)
    expansion = 1 if spec.block == "basic" else 4
    for i, depth in enumerate(spec.layers):
        planes = w * 2 ** i
        for j in range(depth):
            p = f"layers.{i}.{j}"
            stride = 2 if (i > 0 and j == 0) else 1
            # The model computes the projection shortcut first (``shortcut = downsample(x)``).
            if stride != 1 or x[2] != planes * expansion:
                sc = rec.conv(f"{p}.downsample.conv", p, x, planes * expansion, kernel_size=1,
                              stride=stride)
                rec.norm(f"{p}.downsample.bn", p, sc, "batchnorm")
            if spec.block == "basic":
                y = rec.conv(f"{p}.conv1", p, x, planes, kernel_size=3, stride=stride, padding=1)
                y = rec.norm(f"{p}.bn1", p, y, "batchnorm")
                y = rec.activation(f"{p}.act1", p, y, "relu")
                y = rec.conv(f"{p}.conv2", p, y, planes, kernel_size=3, padding=1)
                y = rec.norm(f"{p}.bn2", p, y, "batchnorm")
                last_act = "act2"
            else:
                y = rec.conv(f"{p}.conv1", p, x, planes, kernel_size=1)
                y = rec.norm(f"{p}.bn1", p, y, "batchnorm")
                y = rec.activation(f"{p}.act1", p, y, "relu")
                y = rec.conv(f"{p}.conv2", p, y, planes, kernel_size=3, stride=stride, padding=1)
                y = rec.norm(f"{p}.bn2", p, y, "batchnorm")
                y = rec.activation(f"{p}.act2", p, y, "relu")
                y = rec.conv(f"{p}.conv3", p, y, planes * expansion, kernel_size=1)
                y = rec.norm(f"{p}.bn3", p, y, "batchnorm")
                last_act = "act3"
            y = rec.add(f"{p}.add", p, y)
            x = rec.activation(f"{p}.{last_act}", p, y, "relu")
    x = rec.global_avg_pool("global_pool", None, x)
    rec.dense("fc", None, x, num_classes, bias=True, kind="linear")


def model_complexity(name_or_spec: str | ModelSpec, resolution: int = 224, batch_size: int = 1,
                     dtype_bytes: int = 4, num_classes: int = 1000, *,
                     count_padding: bool = True) -> ComplexityTable:
    """Per-op MACs, FLOPs, parameters and bytes of a model's eval-mode forward pass.

    Args:
      name_or_spec: a registry name (``convfirst_jax.specs.list_models()``) or a spec object.
      resolution: input height = width in pixels.
      batch_size: images per forward pass; every count except parameters scales with it.
      dtype_bytes: bytes per element (4 for float32, 2 for bfloat16).
      num_classes: classifier width.
      count_padding: True (default): conv MACs count every kernel tap, as timm / fvcore do.
        False: only taps that read real input pixels, which is what XLA's cost analysis
        charges (use it to compare with ``compiled.cost_analysis()``).

    Returns:
      A :class:`ComplexityTable`; ``.macs`` / ``.params`` match timm's published counts.
    """
    spec = get_spec(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    if not isinstance(spec, (FourStageNetSpec, ResNetSpec)):
        raise ValueError(f"expected a model name or a FourStageNetSpec / ResNetSpec, "
                         f"got {type(spec).__name__}")
    if not isinstance(resolution, int) or resolution < 32:
        raise ValueError(f"resolution must be an int >= 32 (the models downsample 32x), "
                         f"got {resolution!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    rec = LayerRecorder(batch_size, dtype_bytes, count_padding)
    if isinstance(spec, FourStageNetSpec):
        _convfirst_net_layers(rec, spec, resolution, num_classes)
    else:
        _resnet_layers(rec, spec, resolution, num_classes)
    return ComplexityTable(model=spec.name, resolution=resolution, batch_size=batch_size,
                           dtype_bytes=dtype_bytes, num_classes=num_classes,
                           count_padding=count_padding, layers=tuple(rec.layers))


def fused_block_params(cfg: ConvFirstBlockConfig) -> int:
    """Parameters the fused kernel reads (``pallas_kernels.conv_first_block`` params format).

    conv_w + conv_b, norm scale + shift, w1 + b1, w2 + b2 and layer_scale if present. For a
    ConvNeXt block this equals the block's parameter count; for a ConvFirst block it is the
    BatchNorm-folded set (biases appear, the hidden BN disappears).
    """
    c, e = cfg.channels, cfg.hidden
    k = cfg.kernel_size
    n = k * k * cfg.group_width * c + c + 2 * c + c * e + e + e * c + c
    return n + (c if cfg.layer_scale_init is not None else 0)


def _block_config_from_layers(layers: list[LayerCost]) -> ConvFirstBlockConfig:
    convs = [l for l in layers if l.kind in ("depthwise", "grouped", "full_conv")]
    fcs = [l for l in layers if l.name.endswith(".fc1")]
    if len(convs) != 1 or len(fcs) != 1:
        raise ValueError("fused_block_bytes expects the layers of ONE conv-first block "
                         "(e.g. table.blocks['stages.0.blocks.0']) or a ConvFirstBlockConfig; "
                         f"got layers {[l.name for l in layers]}")
    conv, fc1 = convs[0], fcs[0]
    c = conv.in_shape[2]
    return ConvFirstBlockConfig(
        channels=c, kernel_size=conv.kernel_size, group_width=c // conv.groups,
        expansion=fc1.out_shape[2] // c,
        layer_scale_init=1.0 if any(l.kind == "scale" for l in layers) else None)


def fused_block_bytes(block: list[LayerCost] | ConvFirstBlockConfig, H: int | None = None,
                      W: int | None = None, batch: int = 1, dtype_bytes: int = 4) -> int:
    """Device-memory floor of one FUSED conv-first block: bytes of x + weights + out only.

    This is Lavin's waterline for a fused block (Lavin 2024, waterline analysis): the E*C hidden
    activations never leave the chip, so the kernel reads x (N*H*W*C) and its parameters
    (:func:`fused_block_params`) and writes out (N*H*W*C).

    Args:
      block: the layers of one block (``table.blocks[name]``; H, W default to its input shape)
        or a ``ConvFirstBlockConfig`` (then H and W are required).
      H, W: spatial size of the block's input.
      batch: images.
      dtype_bytes: bytes per element of activations and weights.
    """
    if isinstance(block, ConvFirstBlockConfig):
        cfg = block
        if H is None or W is None:
            raise ValueError("fused_block_bytes(config, H, W, ...) needs H and W")
    else:
        layers = list(block)
        cfg = _block_config_from_layers(layers)
        h0, w0, _ = layers[0].in_shape
        if (H is not None and H != h0) or (W is not None and W != w0):
            raise ValueError(f"H, W = {H}, {W} do not match the block's input shape "
                             f"{layers[0].in_shape}; leave them out to use the block's own")
        H, W = h0, w0
    if batch < 1 or H < 1 or W < 1:
        raise ValueError(f"batch, H, W must be positive, got {batch}, {H}, {W}")
    act = batch * H * W * cfg.channels * dtype_bytes
    return 2 * act + fused_block_params(cfg) * dtype_bytes
