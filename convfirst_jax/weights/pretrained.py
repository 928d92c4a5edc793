"""Import PyTorch weights (timm / official ConvNeXt / torchvision) and export ours in timm naming.

Layouts: PyTorch convs are (out, in / groups, kh, kw) and ours (kh, kw, in / groups, out);
PyTorch ``nn.Linear`` is (out, in) and ours (in, out); a timm ``conv_mlp`` 1x1 conv
(out, in, 1, 1) is the same linear map. Norm weights, biases, layer scales and BatchNorm
running statistics keep their layout. The names are in :mod:`convfirst_jax.weights.names`.

Every tensor is mapped exactly once: a missing, unexpected or mis-shaped tensor stops the
import with one ValueError that names all of them. A classifier with a different number of
classes loads only with ``reset_head=True`` (the head then keeps its fresh initialisation,
logged once). ``.safetensors`` files are read with numpy (no torch); ``.pth`` / ``.pt`` /
``.bin`` files need torch (``pip install 'convfirst-jax[torch]'``), imported only then.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import struct
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from convfirst_jax.models.registry import create_model
from convfirst_jax.weights import names as names_lib

logger = logging.getLogger("convfirst_jax")

PathLike = str | os.PathLike
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
#: Prefixes stripped from every key: DistributedDataParallel and ``torch.compile`` wrappers.
STRIP_PREFIXES = ("module.", "_orig_mod.")
#: Keys of a training checkpoint dict that hold the state dict, tried in this order.
CHECKPOINT_KEYS = ("model", "state_dict", "model_ema", "state_dict_ema")
_MAX_LISTED = 12


# ----------------------------------------------------------------------------------------------
# Files


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as numpy (BF16 via ml_dtypes, which numpy lacks)."""
    from safetensors import safe_open

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    out: dict[str, np.ndarray] = {}
    bf16 = [k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "BF16"]
    with safe_open(str(path), framework="numpy") as f:
        for key in f.keys():
            if key not in bf16:
                out[key] = f.get_tensor(key)
    if bf16:
        import ml_dtypes

        raw = path.read_bytes()
        base = 8 + n
        for key in bf16:
            start, end = header[key]["data_offsets"]
            out[key] = np.frombuffer(raw[base + start:base + end], ml_dtypes.bfloat16).reshape(
                header[key]["shape"])
    return out


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ImportError(
            "reading a .pth/.pt checkpoint needs PyTorch: pip install 'convfirst-jax[torch]' "
            "(or convert the file to .safetensors where torch is installed)") from None
    return torch


def _read_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
    torch = _import_torch()
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict (or a dict with one of "
                         f"{CHECKPOINT_KEYS}), got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue  # e.g. version counters stored next to the tensors
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        out[key] = value.numpy()
    return out


def read_state_dict(path: PathLike) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict from ``.safetensors`` (numpy) or ``.pth`` (needs torch).

    A ``.pth`` training checkpoint may wrap the state dict in one of :data:`CHECKPOINT_KEYS`
    (the official ConvNeXt releases use ``"model"``). DDP / ``torch.compile`` key prefixes
    (:data:`STRIP_PREFIXES`) are removed. Returns ``{key: numpy array}``.
    """
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"weights file {str(p)!r} does not exist")
    if p.suffix == ".safetensors":
        sd = _read_safetensors(p)
    elif p.suffix in TORCH_SUFFIXES:
        sd = _read_torch(p)
    else:
        raise ValueError(f"{p}: unknown weights format {p.suffix!r}; expected .safetensors or "
                         f"one of {', '.join(TORCH_SUFFIXES)}")
    out = {}
    for key, value in sd.items():
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def save_safetensors(state_dict: Mapping[str, np.ndarray], path: PathLike,
                     metadata: Mapping[str, str] | None = None) -> pathlib.Path:
    """Write ``{key: numpy array}`` as a .safetensors file (numpy API, no torch)."""
    from safetensors.numpy import save_file

    p = pathlib.Path(path).expanduser()
    if p.suffix != ".safetensors":
        raise ValueError(f"{p}: export writes .safetensors; name the file *.safetensors")
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.require(v, requirements="C") for k, v in state_dict.items()}, str(p),
              metadata=dict(metadata) if metadata else None)
    return p


# ----------------------------------------------------------------------------------------------
# Layout conversion


def _expected_torch_shape(entry: names_lib.Entry, ours: tuple[int, ...]) -> tuple[int, ...]:
    if entry.kind == "conv":
        kh, kw, cin, cout = ours
        return (cout, cin, kh, kw)
    if entry.kind == "linear":
        cin, cout = ours
        return (cout, cin)
    if entry.kind == "count":
        return ()
    return ours


def _torch_shape_ok(entry: names_lib.Entry, got: tuple[int, ...], want: tuple[int, ...]) -> bool:
    if got == want:
        return True
    # timm conv_mlp: the MLP is a 1x1 Conv2d, (out, in, 1, 1).
    return entry.kind == "linear" and got == want + (1, 1)


def _to_ours(entry: names_lib.Entry, value: np.ndarray) -> np.ndarray:
    if entry.kind == "conv":
        return value.transpose(2, 3, 1, 0)
    if entry.kind == "linear":
        return value.reshape(value.shape[:2]).T
    return value


def _to_torch(entry: names_lib.Entry, value: np.ndarray, conv_mlp: bool) -> np.ndarray:
    if entry.kind == "conv":
        return value.transpose(3, 2, 0, 1)
    if entry.kind == "linear":
        out = value.T
        return out[:, :, None, None] if conv_mlp and not entry.head else out
    return value


def _variable(model, path: tuple):
    obj = model
    for part in path:
        obj = obj[part] if isinstance(part, int) else getattr(obj, part)
    return obj


def _shape_of(var) -> tuple[int, ...]:
    value = var.get_value() if hasattr(var, "get_value") else var.value
    return tuple(int(s) for s in value.shape)


def _listing(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"{len(items)} {label}: {shown}{more}"


def _check_coverage(model, entries: list[names_lib.Entry]) -> None:
    """Internal consistency: the table names every Param / BatchStat of the model once."""
    mapped = [e.path for e in entries if e.path is not None]
    if len(set(mapped)) != len(mapped):
        raise AssertionError("convfirst_jax.weights.names maps a variable twice")
    ours = {tuple(p) for state in nnx.state(model, nnx.Param, nnx.BatchStat)
            for p, _ in nnx.to_flat_state(state)}
    if ours != set(mapped):
        unmapped = sorted(map(str, ours - set(mapped)))[:5]
        unknown = sorted(map(str, set(mapped) - ours))[:5]
        raise AssertionError("convfirst_jax.weights.names does not cover the model: "
                             f"unmapped {unmapped}, unknown {unknown}")


def head_classes(state_dict: Mapping[str, np.ndarray]) -> int | None:
    """Number of classes of the classifier in a state dict (None if it has no known head)."""
    for key in ("head.fc.weight", "head.weight", "fc.weight"):
        if key in state_dict and np.ndim(state_dict[key]) >= 2:
            return int(state_dict[key].shape[0])
    return None


def check_state_dict(model, shapes: Mapping[str, tuple[int, ...]], *, naming: str,
                     reset_head: bool = False) -> list[names_lib.Entry]:
    """Validate state-dict key -> shape against ``model`` (abstract or concrete), no data.

    Returns the entries to load. Raises one ValueError naming every missing, unexpected and
    mis-shaped tensor. With ``reset_head`` the classifier tensors must be present (any
    number of classes) but are not loaded.
    """
    entries = names_lib.tensor_map(model, naming)
    _check_coverage(model, entries)
    missing, mis_shaped, head_mismatch = [], [], []
    for e in entries:
        if e.name not in shapes:
            if e.kind not in names_lib.OPTIONAL_KINDS:
                missing.append(e.name)
            continue
        got = tuple(int(s) for s in shapes[e.name])
        want = _expected_torch_shape(e, _shape_of(_variable(model, e.path))) if e.path else ()
        if not _torch_shape_ok(e, got, want):
            if e.head and reset_head:
                continue
            (head_mismatch if e.head else mis_shaped).append(
                f"{e.name} {got} (model expects {want})")
    known = {e.name for e in entries}
    unexpected = sorted(k for k in shapes if k not in known)
    if missing or mis_shaped or head_mismatch or unexpected:
        parts = []
        if missing:
            parts.append(_listing("missing", missing))
        if unexpected:
            parts.append(_listing("unexpected", unexpected))
        if mis_shaped or head_mismatch:
            parts.append(_listing("mis-shaped", mis_shaped + head_mismatch))
        hint = ""
        if head_mismatch and not (missing or mis_shaped or unexpected):
            hint = ("; only the classifier differs: pass num_classes=<classes of the file> to "
                    "keep it, or reset_head=True to load everything else and re-initialise it")
        elif unexpected and not missing:
            hint = "; is this the right model size/variant?"
        raise ValueError(f"cannot load these weights into {model.spec.name} ({naming} names): "
                         + "; ".join(parts) + hint)
    return entries


def resolve_naming(state_dict: Mapping[str, np.ndarray], naming: str = "auto") -> str:
    """``naming`` checked, or with "auto" the naming detected from the state dict's keys."""
    if naming == "auto":
        return names_lib.detect_naming(state_dict)
    if naming not in names_lib.NAMINGS:
        raise ValueError(f"unknown naming {naming!r}; valid: auto, {', '.join(names_lib.NAMINGS)}")
    return naming


def load_state_dict(model, state_dict: Mapping[str, np.ndarray], *, naming: str = "auto",
                    reset_head: bool = False) -> nnx.Module:
    """Copy a PyTorch state dict into ``model`` in place (see :func:`check_state_dict`).

    Values are cast to each variable's dtype. With ``reset_head=True`` the classifier keeps
    its current (freshly initialised) values. Returns ``model``.
    """
    names_lib.check_family(model, state_dict)
    naming = resolve_naming(state_dict, naming)
    entries = check_state_dict(model, {k: np.shape(v) for k, v in state_dict.items()},
                               naming=naming, reset_head=reset_head)
    for e in entries:
        if e.path is None or e.name not in state_dict or (e.head and reset_head):
            continue
        var = _variable(model, e.path)
        dtype = (var.get_value() if hasattr(var, "get_value") else var.value).dtype
        value = _to_ours(e, np.asarray(state_dict[e.name]).astype(np.float32))
        var.set_value(jnp.asarray(value, dtype=dtype))
    return model


def load_pretrained(name, path: PathLike | Mapping[str, np.ndarray], *, num_classes: int | None = None,
                    reset_head: bool = False, naming: str = "auto", block_impl: str = "xla",
                    dtype=jnp.float32, seed: int = 0) -> nnx.Module:
    """A model of architecture ``name`` with the PyTorch weights in ``path``, in eval mode.

    Args:
      name: a registered model name ("convnext_tiny", "resnet50", ...; see
        ``convfirst_jax.list_models()``) or a spec object for a custom architecture.
      path: ``.safetensors`` (read with numpy) or ``.pth`` / ``.pt`` (needs torch), or a
        state dict already read with :func:`read_state_dict`.
      num_classes: classifier width; None = as many classes as the file's head.
      reset_head: allow ``num_classes`` to differ from the file: the head is then freshly
        initialised (timm init, from ``seed``) instead of loaded. Said once in the log.
      naming: "auto" (detected from the keys), "timm", "official" or "torchvision".
      block_impl, dtype, seed: as for :func:`convfirst_jax.create_model`.

    Raises ValueError naming every missing, unexpected or mis-shaped tensor.
    """
    if isinstance(path, Mapping):
        state_dict, where = path, "the state dict"
    else:
        state_dict, where = read_state_dict(path), str(path)
    naming = resolve_naming(state_dict, naming)
    file_classes = head_classes(state_dict)
    if num_classes is None:
        if file_classes is None:
            raise ValueError(f"{where}: no classifier found; pass num_classes")
        num_classes = file_classes
    elif file_classes is not None and num_classes != file_classes and not reset_head:
        raise ValueError(
            f"{where} has a {file_classes}-class head but num_classes={num_classes}; pass "
            f"reset_head=True to load everything else and re-initialise the head, or "
            f"num_classes={file_classes}")
    model = create_model(name, num_classes=num_classes, block_impl=block_impl, dtype=dtype,
                         seed=seed)
    reset = reset_head and file_classes is not None and num_classes != file_classes
    load_state_dict(model, state_dict, naming=naming, reset_head=reset)
    if reset:
        logger.warning("load_pretrained(%s): the %d-class head of %s was not loaded; the "
                       "%d-class head is freshly initialised (train it before use)",
                       model.spec.name, file_classes, path, num_classes)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------
# Export


def model_state_dict(model, *, naming: str = "timm", conv_mlp: bool | None = None
                     ) -> dict[str, np.ndarray]:
    """Our model's weights as a PyTorch state dict (numpy arrays, PyTorch layouts).

    ``conv_mlp``: write the block MLP as 1x1-conv weights (out, in, 1, 1) as timm's
    ConvNeXt-atto/femto/pico/nano do (``names.TIMM_CONV_MLP``); None picks timm's choice for
    the model name (Linear for any other name). ``num_batches_tracked`` is written as 0.
    """
    if conv_mlp is None:
        conv_mlp = naming == "timm" and model.spec.name in names_lib.TIMM_CONV_MLP
    out: dict[str, np.ndarray] = {}
    for e in names_lib.tensor_map(model, naming):
        if e.kind == "count":
            out[e.name] = np.zeros((), np.int64)
            continue
        var = _variable(model, e.path)
        value = np.asarray(var.get_value() if hasattr(var, "get_value") else var.value)
        out[e.name] = np.require(_to_torch(e, value.astype(np.float32), conv_mlp),
                                 requirements="C")
    return out


def export_state_dict(model, path: PathLike, *, naming: str = "timm",
                      conv_mlp: bool | None = None) -> pathlib.Path:
    """Write ``model``'s weights to ``path`` (.safetensors) in PyTorch naming (default timm).

    timm loads the file with ``model.load_state_dict(safetensors.torch.load_file(path))``
    (see :func:`model_state_dict` for ``conv_mlp``). Returns the path written.
    """
    sd = model_state_dict(model, naming=naming, conv_mlp=conv_mlp)
    return save_safetensors(sd, path, metadata={"format": "pt", "naming": naming,
                                                "architecture": model.spec.name})
