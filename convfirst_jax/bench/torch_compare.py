"""Optional cross-check against PyTorch: timm's model of the same size, torch.compile'd.

torch and timm are imported lazily, only when ``--compare-torch`` is given; when they are
missing (or there is no CUDA device) the lab says so and carries on.
"""

from __future__ import annotations

from typing import Any

from convfirst_jax.bench.timing import Timing, time_callable


def timm_name(model: str) -> str:
    """timm model of the same size: convfirst_<size>[_gw8] -> convnext_<size>; others as is."""
    if model.startswith("convfirst_"):
        return "convnext_" + model.split("_")[1]
    return model


def torch_available(require_cuda: bool = True) -> tuple[bool, str]:
    """(usable, reason): torch + timm import (and, with ``require_cuda``, a CUDA device is
    visible)."""
    try:
        import timm  # noqa: F401
        import torch
    except Exception as e:  # ImportError, or a broken install (e.g. a CUDA-only torchvision)
        return False, (f"--compare-torch: torch/timm not importable ({type(e).__name__}: "
                       f"{str(e)[:200]}); install matching torch, torchvision and timm")
    if require_cuda and not torch.cuda.is_available():
        return False, "--compare-torch: torch imports but sees no CUDA device; skipped"
    return True, ""


def time_timm(model: str, *, batch_size: int, resolution: int, num_classes: int,
              warmup: int, repeats: int, min_sample_s: float, max_number: int,
              buffers: int, seed: int = 0) -> tuple[Timing, dict[str, Any]]:
    """Time timm's model with torch.compile, channels_last and bf16 autocast (inference)."""
    import timm
    import torch

    torch.manual_seed(seed)
    name = timm_name(model)
    net = timm.create_model(name, pretrained=False, num_classes=num_classes)
    net = net.cuda().eval().to(memory_format=torch.channels_last)
    compiled = torch.compile(net)
    xs = [torch.randn(batch_size, 3, resolution, resolution, device="cuda")
          .to(memory_format=torch.channels_last) for _ in range(buffers)]

    def call(i: int):
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            return compiled(xs[i])

    timing = time_callable(call, sync=lambda _: torch.cuda.synchronize(), buffers=buffers,
                           warmup=max(warmup, 3), repeats=repeats, min_sample_s=min_sample_s,
                           max_number=max_number)
    info = {"timm_model": name, "torch_version": torch.__version__,
            "timm_version": timm.__version__,
            "note": "torch.compile, channels_last, bf16 autocast; compile time is in first_call_s"}
    return timing, info


def timm_train_name(model: str) -> str:
    """PyTorch model of a *training* comparison: timm's for ConvNeXt / ResNet, and for
    ConvFirst a plain-PyTorch twin of the same architecture (:func:`torch_convfirst`)."""
    return f"torch_{model}" if model.startswith("convfirst_") else timm_name(model)


def torch_convfirst(model: str, num_classes: int):
    """The ConvFirstNet of ``convfirst_jax.specs`` in plain PyTorch (same layers and shapes).

    Stem 4x4/4 conv + BN; stages: [BN -> 2x2/2 conv] + blocks of k x k conv (groups =
    C / group_width, no bias) -> BN -> 1x1 C->E*C -> BN -> SiLU -> 1x1 E*C->C -> BN (+ x);
    head: average pool -> BN -> Linear. Used only to time a train step against this project's.
    """
    import torch
    from torch import nn

    from convfirst_jax.specs import MODEL_SPECS

    spec = MODEL_SPECS[model]
    act = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}[spec.activation]

    class Block(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            k, h = spec.kernel_size, spec.expansion * c
            self.branch = nn.Sequential(
                nn.Conv2d(c, c, k, padding=k // 2, groups=c // spec.group_width, bias=False),
                nn.BatchNorm2d(c), nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), act(),
                nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return x + self.branch(x)

    layers: list = [nn.Conv2d(3, spec.dims[0], spec.stem_size, stride=spec.stem_size,
                              bias=False), nn.BatchNorm2d(spec.dims[0])]
    for i, (depth, c) in enumerate(zip(spec.depths, spec.dims)):
        if i > 0:
            layers += [nn.BatchNorm2d(spec.dims[i - 1]), nn.Conv2d(spec.dims[i - 1], c, 2, 2)]
        layers += [Block(c) for _ in range(depth)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(spec.dims[-1]),
               nn.Linear(spec.dims[-1], num_classes)]
    return torch.nn.Sequential(*layers)


def make_torch_train_step(model: str, *, batch_size: int, resolution: int, num_classes: int,
                          threads: int | None = None, seed: int = 0):
    """A callable running one PyTorch AdamW train step on random data (CPU, channels_last, fp32).

    timm's model for ConvNeXt / ResNet, :func:`torch_convfirst` for ConvFirst.

    Returns ``(step, info)``: ``step()`` does forward, label-smoothed cross entropy, backward,
    global-norm clipping and an AdamW update, the same work as ``train.state.train_step``.
    """
    import timm
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    name = timm_train_name(model)
    if model.startswith("convfirst_"):
        net = torch_convfirst(model, num_classes)
    else:
        net = timm.create_model(name, pretrained=False, num_classes=num_classes)
    net = net.train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.randn(batch_size, 3, resolution, resolution).to(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch_size,))

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    info = {"timm_model": name, "torch_version": torch.__version__,
            "timm_version": timm.__version__, "torch_threads": torch.get_num_threads(),
            "note": "eager fp32, channels_last, AdamW + clip 1.0, label smoothing 0.1"}
    return step, info
