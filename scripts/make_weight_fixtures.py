"""Write tests/fixtures/weights/: small PyTorch models and the logits PyTorch computes.

Needs torch, timm and torchvision (``pip install 'convfirst-jax[torch]'``); the tests that
read the output need none of them. Run from the repository root::

    python scripts/make_weight_fixtures.py [--out tests/fixtures/weights]

What it writes:

* ``<fixture>.safetensors``: the state dict of a random model in its PyTorch naming, float
  tensors stored as float16 (integer ``num_batches_tracked`` as int64). The model's own
  weights are rounded to float16 *before* its logits are computed, so PyTorch's float32
  logits are those of exactly the stored weights.
* ``references.safetensors``: per fixture a fixed NCHW float32 input (2, 3, 32, 32) and the
  float32 logits of ``model.eval()`` on it.
* ``manifest.json``: per fixture the architecture (to build the same model in JAX) and the
  naming; plus ``shapes``: every key and shape of the full-size timm ``convnext_atto``,
  ``convnext_tiny``, ``resnet18``, ``resnet50``, torchvision ``resnet18`` / ``resnet50`` and
  the official ConvNeXt-T names (timm's keys renamed the way the official repository names
  them), for name/shape checks without data.

Fixtures (reduced width, so the files stay small; same code paths as the full models):

* ``convnext_w16_timm``: timm ``ConvNeXt`` with convnext_atto's depths (2, 2, 6, 2) and
  ``conv_mlp=True`` (atto's MLP: 1x1 convs), dims (16, 32, 64, 128), 1000 classes.
* ``convnext_w16_official``: the same tensors under the facebookresearch/ConvNeXt names
  (``downsample_layers``, ``stages.i.j.dwconv``, ``pwconv1/2`` as ``nn.Linear`` (out, in),
  ``norm``, ``head``), renamed here.
* ``resnet18_w8_timm``: timm ``ResNet`` (BasicBlock, layers 2-2-2-2) at base width 8
  (timm fixes the stem at 64 channels, so the stem and first block are rebuilt at 8 with
  timm's own classes).
* ``resnet18_w8_torchvision``: torchvision ``ResNet`` (BasicBlock, 2-2-2-2), base width 8,
  built with torchvision's own ``_make_layer``.
* ``resnet_bottleneck_w8_torchvision``: torchvision Bottleneck ResNet (v1.5), layers
  1-2-1-1, base width 8.

Every parameter and buffer is redrawn so that no branch is trivial: conv / linear weights
N(0, 1/fan_in), biases N(0, 0.2^2), norm weights and layer scales U(0.5, 1.5), running means
N(0, 0.2^2), running variances U(0.5, 2). (timm's init would make ConvNeXt blocks almost
the identity: layer scale 1e-6.)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
SEED = 0


def import_torch_stack():
    """torch, timm, torchvision; works around a torchvision wheel built for CUDA torch.

    torchvision's import registers fake kernels for its compiled ``nms`` / ``qnms`` ops; when
    its C++ extension cannot load (a CUDA torchvision next to a CPU torch) that registration
    fails. Defining the two op schemas first lets the pure-Python models import (we never
    call those ops).
    """
    import torch
    try:
        import torchvision  # noqa: F401
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
        for mod in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[mod]
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_torch_stack._lib = lib  # keep the definitions alive
        import torchvision  # noqa: F401,F811
    import timm
    import torchvision
    return torch, timm, torchvision


def randomize(model, torch, seed: int) -> None:
    """Redraw every parameter and buffer (see module docstring), then round to float16."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if not p.dtype.is_floating_point:
                continue
            leaf = name.rsplit(".", 1)[-1]
            parent = name.rsplit(".", 1)[0]
            module = model.get_submodule(parent) if "." in name else model
            is_norm = isinstance(module, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)) or \
                "norm" in type(module).__name__.lower()
            if leaf == "running_mean":
                v = torch.randn(p.shape, generator=g) * 0.2
            elif leaf == "running_var":
                v = torch.rand(p.shape, generator=g) * 1.5 + 0.5
            elif leaf == "gamma" or (leaf == "weight" and is_norm):
                v = torch.rand(p.shape, generator=g) + 0.5
            elif leaf == "bias":
                v = torch.randn(p.shape, generator=g) * 0.2
            else:
                fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 1
                v = torch.randn(p.shape, generator=g) / fan_in ** 0.5
            p.copy_(v.half().float())


def timm_convnext_w16(torch, timm):
    from timm.models.convnext import ConvNeXt
    return ConvNeXt(depths=(2, 2, 6, 2), dims=(16, 32, 64, 128), conv_mlp=True,
                    num_classes=1000)


def timm_resnet18_w8(torch, timm):
    from timm.models.resnet import BasicBlock, ResNet
    m = ResNet(BasicBlock, [2, 2, 2, 2], channels=(8, 16, 32, 64), num_classes=1000)
    # timm's plain stem is always 64 wide: rebuild stem and layer1.0 at width 8.
    m.conv1 = torch.nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)
    m.bn1 = torch.nn.BatchNorm2d(8)
    m.layer1[0] = BasicBlock(8, 8)
    return m


def torchvision_resnet(torch, torchvision, block_name: str, layers, width: int):
    from torchvision.models import resnet as tvr
    block = getattr(tvr, block_name)
    m = tvr.ResNet(block, list(layers), num_classes=1000)
    m.inplanes = width
    m.conv1 = torch.nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    m.bn1 = torch.nn.BatchNorm2d(width)
    m.layer1 = m._make_layer(block, width, layers[0])
    m.layer2 = m._make_layer(block, 2 * width, layers[1], stride=2)
    m.layer3 = m._make_layer(block, 4 * width, layers[2], stride=2)
    m.layer4 = m._make_layer(block, 8 * width, layers[3], stride=2)
    m.fc = torch.nn.Linear(8 * width * block.expansion, 1000)
    return m


def timm_to_official(sd: dict) -> dict:
    """timm ConvNeXt keys -> facebookresearch/ConvNeXt keys (MLP as 2-D nn.Linear weights)."""
    out = {}
    for k, v in sd.items():
        k2 = k.replace("stem.", "downsample_layers.0.")
        k2 = re.sub(r"stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k2)
        k2 = re.sub(r"stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k2)
        k2 = k2.replace("conv_dw", "dwconv").replace("mlp.fc1", "pwconv1")
        k2 = k2.replace("mlp.fc2", "pwconv2")
        k2 = k2.replace("head.norm.", "norm.").replace("head.fc.", "head.")
        if "pwconv" in k2 and v.ndim == 4:
            v = v.reshape(v.shape[:2])
        out[k2] = v
    return out


def _np(sd: dict, torch) -> dict[str, np.ndarray]:
    out = {}
    for k, v in sd.items():
        v = v.detach().cpu()
        out[k] = (v.half() if v.dtype.is_floating_point else v).numpy()
    return out


def _shapes(sd: dict) -> dict[str, str]:
    """key -> shape as "d0,d1,..." ("" for a scalar): one line per key in the JSON."""
    return {k: ",".join(str(d) for d in v.shape) for k, v in sd.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "weights"))
    args = parser.parse_args(argv)
    torch, timm, torchvision = import_torch_stack()
    from safetensors.numpy import save_file

    torch.manual_seed(SEED)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(SEED).standard_normal((2, 3, 32, 32)).astype(np.float32)

    convnext_arch = dict(kind="convnext", depths=[2, 2, 6, 2], dims=[16, 32, 64, 128])
    builds = {
        "convnext_w16_timm": (lambda: timm_convnext_w16(torch, timm), "timm", convnext_arch),
        "resnet18_w8_timm": (lambda: timm_resnet18_w8(torch, timm), "timm",
                             dict(kind="resnet", block="basic", layers=[2, 2, 2, 2], width=8)),
        "resnet18_w8_torchvision": (
            lambda: torchvision_resnet(torch, torchvision, "BasicBlock", (2, 2, 2, 2), 8),
            "torchvision", dict(kind="resnet", block="basic", layers=[2, 2, 2, 2], width=8)),
        "resnet_bottleneck_w8_torchvision": (
            lambda: torchvision_resnet(torch, torchvision, "Bottleneck", (1, 2, 1, 1), 8),
            "torchvision", dict(kind="resnet", block="bottleneck", layers=[1, 2, 1, 1],
                                width=8)),
    }
    references, manifest = {}, {"torch": torch.__version__, "timm": timm.__version__,
                                "torchvision": torchvision.__version__, "fixtures": {}}
    xt = torch.from_numpy(x)
    for i, (name, (build, naming, arch)) in enumerate(builds.items()):
        model = build()
        randomize(model, torch, SEED + i)
        model.eval()
        with torch.no_grad():
            logits = model(xt).numpy().astype(np.float32)
        sd = model.state_dict()
        save_file(_np(sd, torch), str(out / f"{name}.safetensors"))
        references[f"{name}.input"] = x
        references[f"{name}.logits"] = logits
        manifest["fixtures"][name] = dict(file=f"{name}.safetensors", naming=naming, **arch)
        if name == "convnext_w16_timm":
            official = timm_to_official(sd)
            oname = "convnext_w16_official"
            save_file(_np(official, torch), str(out / f"{oname}.safetensors"))
            references[f"{oname}.input"] = x
            references[f"{oname}.logits"] = logits
            manifest["fixtures"][oname] = dict(file=f"{oname}.safetensors", naming="official",
                                               **arch)
        print(f"{name}: {sum(v.numel() for v in sd.values())} values, logits "
              f"{logits.shape} |max| {np.abs(logits).max():.3f}")
    save_file(references, str(out / "references.safetensors"))

    shapes = {}
    for tname in ("convnext_atto", "convnext_tiny", "resnet18", "resnet50"):
        shapes[f"timm/{tname}"] = _shapes(timm.create_model(tname, pretrained=False).state_dict())
    for tname in ("resnet18", "resnet50"):
        shapes[f"torchvision/{tname}"] = _shapes(getattr(torchvision.models, tname)().state_dict())
    shapes["official/convnext_tiny"] = _shapes(timm_to_official(
        timm.create_model("convnext_tiny", pretrained=False).state_dict()))
    manifest["shapes"] = shapes
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
