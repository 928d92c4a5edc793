"""PyTorch state-dict names of every tensor of our models: the one home of the name mapping.

A *naming* is a PyTorch source of weights:

* ``"timm"``: timm's ``convnext_*`` (V1: ``stem.0``, ``stages.{i}.downsample.{0,1}``,
  ``stages.{i}.blocks.{j}.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}``, ``head.{norm,fc}``) and
  timm's ``resnet18/50``; for ConvFirstNet (which has no PyTorch implementation) the same
  timm-ConvNeXt-style names, with the extra BatchNorms as ``mlp.fc1_norm`` / ``mlp.fc2_norm``.
* ``"official"``: facebookresearch/ConvNeXt (``downsample_layers.{0..3}.{0,1}``,
  ``stages.{i}.{j}.{dwconv,norm,pwconv1,pwconv2,gamma}``, ``norm``, ``head``).
* ``"torchvision"``: torchvision ``resnet18/50`` (``conv1``, ``bn1``, ``layer{1-4}.{j}``,
  ``downsample.{0,1}``, ``fc``) -- the same names as timm's ResNet, so the two are one table.

:func:`tensor_map` walks a model (concrete or abstract) and returns one :class:`Entry` per
PyTorch tensor: its name, the path of our variable and how the layout converts. BatchNorm
layers contribute ``weight``, ``bias``, ``running_mean``, ``running_var`` and
``num_batches_tracked``; the last has no counterpart here (our BatchNorm keeps no counter:
PyTorch only uses it when ``momentum=None``), so it is an entry of kind ``"count"``: it must
be present on import (or is accepted missing, see :data:`OPTIONAL_KINDS`) and is written as
0 on export.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from convfirst_jax.models.macro import FourStageNet
from convfirst_jax.models.resnet import ResNet

Kind = Literal["conv", "linear", "vector", "count"]
NAMINGS = ("timm", "official", "torchvision")
#: Entry kinds that may be absent from a state dict (older torch versions do not save them).
OPTIONAL_KINDS = ("count",)
#: timm builds these ConvNeXts with ``conv_mlp=True``: the MLP is two 1x1 ``Conv2d`` (weights
#: (out, in, 1, 1)) instead of ``nn.Linear`` (out, in). Both import; export follows timm.
TIMM_CONV_MLP = ("convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One PyTorch tensor and the variable of our model it maps to.

    Attributes:
      name: PyTorch state-dict key.
      path: path of our variable (``nnx`` attribute names and list indices), e.g.
        ``("stages", 1, "blocks", 0, "conv_dw", "kernel")``; None for a "count" entry.
      kind: "conv" (torch OIHW <-> our HWIO), "linear" (torch (out, in) or a 1x1 conv
        (out, in, 1, 1) <-> our (in, out)), "vector" (same layout), "count" (BatchNorm
        ``num_batches_tracked``, a scalar with no counterpart).
      head: True for the classifier's weight and bias (what ``reset_head`` skips).
    """

    name: str
    path: tuple | None
    kind: Kind
    head: bool = False


def _conv(name: str, path: tuple, bias: bool, head: bool = False) -> list[Entry]:
    out = [Entry(f"{name}.weight", path + ("kernel",), "conv", head)]
    if bias:
        out.append(Entry(f"{name}.bias", path + ("bias",), "vector", head))
    return out


def _linear(name: str, path: tuple, bias: bool, head: bool = False) -> list[Entry]:
    out = [Entry(f"{name}.weight", path + ("kernel",), "linear", head)]
    if bias:
        out.append(Entry(f"{name}.bias", path + ("bias",), "vector", head))
    return out


def _layernorm(name: str, path: tuple) -> list[Entry]:
    return [Entry(f"{name}.weight", path + ("scale",), "vector"),
            Entry(f"{name}.bias", path + ("bias",), "vector")]


def _batchnorm(name: str, path: tuple) -> list[Entry]:
    return [Entry(f"{name}.weight", path + ("scale",), "vector"),
            Entry(f"{name}.bias", path + ("bias",), "vector"),
            Entry(f"{name}.running_mean", path + ("mean",), "vector"),
            Entry(f"{name}.running_var", path + ("var",), "vector"),
            Entry(f"{name}.num_batches_tracked", None, "count")]


def _norm(name: str, path: tuple, module) -> list[Entry]:
    is_bn = hasattr(module, "mean") and hasattr(module, "var")
    return _batchnorm(name, path) if is_bn else _layernorm(name, path)


def _has_bias(layer) -> bool:
    return getattr(layer, "bias", None) is not None


def _four_stage(model, naming: str) -> list[Entry]:
    official = naming == "official"
    out: list[Entry] = []
    stem = model.stem
    sname = "downsample_layers.0" if official else "stem"
    out += _conv(f"{sname}.0", ("stem", "conv"), _has_bias(stem.conv))
    out += _norm(f"{sname}.1", ("stem", "norm"), stem.norm)
    for i, stage in enumerate(model.stages):
        if stage.downsample is not None:
            dname = f"downsample_layers.{i}" if official else f"stages.{i}.downsample"
            ds = stage.downsample
            out += _norm(f"{dname}.0", ("stages", i, "downsample", "norm"), ds.norm)
            out += _conv(f"{dname}.1", ("stages", i, "downsample", "conv"), _has_bias(ds.conv))
        for j, block in enumerate(stage.blocks):
            p = ("stages", i, "blocks", j)
            b = f"stages.{i}.{j}" if official else f"stages.{i}.blocks.{j}"
            conv, fc1, fc2 = (("dwconv", "pwconv1", "pwconv2") if official
                              else ("conv_dw", "mlp.fc1", "mlp.fc2"))
            out += _conv(f"{b}.{conv}", p + ("conv_dw",), _has_bias(block.conv_dw))
            out += _norm(f"{b}.norm", p + ("norm",), block.norm)
            out += _linear(f"{b}.{fc1}", p + ("fc1",), _has_bias(block.fc1))
            if block.fc1_norm is not None:
                out += _norm(f"{b}.mlp.fc1_norm", p + ("fc1_norm",), block.fc1_norm)
            out += _linear(f"{b}.{fc2}", p + ("fc2",), _has_bias(block.fc2))
            if block.fc2_norm is not None:
                out += _norm(f"{b}.mlp.fc2_norm", p + ("fc2_norm",), block.fc2_norm)
            if block.gamma is not None:
                out.append(Entry(f"{b}.gamma", p + ("gamma",), "vector"))
    head = model.head
    out += _norm("norm" if official else "head.norm", ("head", "norm"), head.norm)
    out += _linear("head" if official else "head.fc", ("head", "fc"), True, head=True)
    return out


def _resnet(model) -> list[Entry]:
    out = _conv("conv1", ("conv1",), False) + _batchnorm("bn1", ("bn1",))
    for i, layer in enumerate(model.layers):
        for j, block in enumerate(layer):
            b, p = f"layer{i + 1}.{j}", ("layers", i, j)
            for k in (1, 2, 3):
                if hasattr(block, f"conv{k}"):
                    out += _conv(f"{b}.conv{k}", p + (f"conv{k}",), False)
                    out += _batchnorm(f"{b}.bn{k}", p + (f"bn{k}",))
            if block.downsample is not None:
                out += _conv(f"{b}.downsample.0", p + ("downsample", "conv"), False)
                out += _batchnorm(f"{b}.downsample.1", p + ("downsample", "bn"))
    return out + _linear("fc", ("fc",), True, head=True)


def family(model) -> str:
    """"convnext", "convfirst" or "resnet" for one of our models; ValueError otherwise."""
    if isinstance(model, ResNet):
        return "resnet"
    if isinstance(model, FourStageNet):
        return model.spec.family
    raise ValueError("expected a model from convfirst_jax.create_model, got "
                     f"{type(model).__name__}")


def valid_namings(model) -> tuple[str, ...]:
    """The namings a model can be read from / written to."""
    return {"convnext": ("timm", "official"), "convfirst": ("timm",),
            "resnet": ("timm", "torchvision")}[family(model)]


def tensor_map(model, naming: str) -> list[Entry]:
    """Every PyTorch tensor of ``model`` in ``naming``, in PyTorch ``state_dict()`` order."""
    fam = family(model)
    if naming not in valid_namings(model):
        raise ValueError(f"naming {naming!r} does not apply to a {fam} model "
                         f"({model.spec.name}); valid: {', '.join(valid_namings(model))}")
    return _resnet(model) if fam == "resnet" else _four_stage(model, naming)


def detect_family(keys) -> str:
    """"resnet", "convfirst" or "convnext": the architecture family a state dict is for."""
    keys = set(keys)
    naming = detect_naming(keys)
    if naming == "timm" and "conv1.weight" in keys:
        return "resnet"
    if any(k.endswith(".mlp.fc1_norm.weight") for k in keys):
        return "convfirst"
    return "convnext"


def check_family(model, keys) -> None:
    """ValueError unless a state dict's architecture family is ``model``'s."""
    fam, theirs = family(model), detect_family(keys)
    if fam != theirs:
        raise ValueError(
            f"these are {theirs} weights but {model.spec.name} is a {fam} model; build the "
            f"matching architecture (convfirst_jax.list_models())")


def detect_naming(keys) -> str:
    """Which PyTorch source a set of state-dict keys comes from (ValueError if none fits)."""
    keys = set(keys)
    if "downsample_layers.0.0.weight" in keys:
        return "official"
    if "stem.0.weight" in keys:
        return "timm"
    if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys:
        return "timm"          # timm and torchvision ResNets share every name
    sample = sorted(keys)[:5]
    raise ValueError(
        "cannot tell which PyTorch model these weights come from: expected timm ConvNeXt "
        "('stem.0.weight'), official ConvNeXt ('downsample_layers.0.0.weight') or a "
        f"timm/torchvision ResNet ('conv1.weight', 'layer1.0.conv1.weight'); first keys: {sample}")
