"""Image decoding and augmentation for ImageNet-style folders (numpy + PIL only).

Train: Inception-style random-resized-crop (Szegedy et al. 2015, "Going deeper with convolutions",
sec. 6; the torchvision ``RandomResizedCrop`` recipe: area scale (0.08, 1), aspect ratio (3/4, 4/3)
sampled log-uniformly, 10 attempts then a centre-crop fallback) and a horizontal flip.
Eval: resize the short side to ``image_size / crop_pct`` (crop_pct 0.875) and centre-crop
``image_size`` -- the standard ImageNet evaluation transform used by ConvNeXt (Liu et al. 2022)
and by Lavin (arXiv 2404.03617, sec. 5 training setup).

Both transforms compute the crop box in the coordinates of the stored image first and only then
decode: JPEGs are decoded with ``Image.draft`` at the largest DCT reduction (1/2, 1/4, 1/8) that
still leaves at least ``image_size`` pixels across the crop, and the crop + resize is one PIL
``resize(box=...)`` call. Decoding a 224-px JPEG for a 64-px crop is therefore several times
cheaper than a full-size decode.

An unreadable, truncated or otherwise undecodable file never raises: the loaders return a zero
image and ``valid = 0`` so the training loop can mask and count it.

This module must stay importable without jax (grain worker processes import it).
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image

# ImageNet channel statistics on the [0, 1] scale (RGB order).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)

DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
DEFAULT_CROP_PCT = 0.875

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in source pixels


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
    attempts: int = 10,
) -> Box:
    """Samples an Inception-style crop box (Szegedy et al. 2015, sec. 6).

    Up to ``attempts`` times: draw a target area uniformly in ``scale * width * height`` and an
    aspect ratio log-uniformly in ``ratio``; accept the first crop that fits, at a uniform
    position. Otherwise fall back to the largest centred crop whose aspect ratio is clamped to
    ``ratio``. Returns integer-valued (left, top, right, bottom).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not (0.0 < scale[0] <= scale[1] <= 1.0) or not (0.0 < ratio[0] <= ratio[1]):
        raise ValueError(
            f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], got "
            f"scale={scale}, ratio={ratio}"
        )
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return (left, top, left + w, top + h)
    # Fallback: centre crop with the aspect ratio clamped into `ratio`.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


def center_crop_box(width: int, height: int, image_size: int, crop_pct: float = DEFAULT_CROP_PCT) -> Box:
    """Box of the standard eval transform in source coordinates.

    Equivalent to: resize the short side to ``floor(image_size / crop_pct)``, then centre-crop
    ``image_size x image_size`` (timm / ConvNeXt evaluation, crop_pct = 0.875).
    """
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    resize_to = math.floor(image_size / crop_pct)
    side = min(width, height) * image_size / resize_to  # crop side in source pixels
    left, top = (width - side) / 2.0, (height - side) / 2.0
    return (left, top, left + side, top + side)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale / CMYK / palette / alpha / 16-bit -> 8-bit RGB (alpha dropped)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        hi = 65535.0 if arr.max(initial=0.0) > 255.0 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / hi), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def decode_crop_resize(data: bytes, box_fn, image_size: int) -> np.ndarray:
    """Decodes ``data`` and returns the crop ``box_fn(width, height)`` resized to a square.

    ``box_fn`` gets the stored image size and returns a (left, top, right, bottom) box in those
    pixels. JPEGs are decoded with ``Image.draft`` at the largest DCT reduction that keeps the
    box at least ``image_size`` wide and tall. Returns uint8 (image_size, image_size, 3).
    Raises whatever PIL raises for an unreadable file (callers turn that into valid = 0).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "palette images with transparency" / EXIF noise
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        left, top, right, bottom = box_fn(width, height)
        if img.format == "JPEG":
            need_w = math.ceil(width * image_size / max(right - left, 1e-6))
            need_h = math.ceil(height * image_size / max(bottom - top, 1e-6))
            img.draft("RGB", (need_w, need_h))
            sx, sy = img.size[0] / width, img.size[1] / height
            left, right, top, bottom = left * sx, right * sx, top * sy, bottom * sy
        img = _to_rgb(img)  # forces the (possibly reduced) decode; truncation raises here
        img = img.resize(
            (image_size, image_size), Image.Resampling.BILINEAR, box=(left, top, right, bottom)
        )
        out = np.asarray(img, dtype=np.uint8)
    if out.shape != (image_size, image_size, 3):
        raise ValueError(f"decoded image has shape {out.shape}")
    return out


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> float32 ``(x / 255 - mean) / std`` with ImageNet statistics."""
    x = np.multiply(images, _SCALE, dtype=np.float32)  # one pass: x / (255 std) - mean / std
    x += _OFFSET
    return x


def train_image(
    data: bytes,
    image_size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
    flip: bool = True,
) -> tuple[np.ndarray, bool]:
    """Train transform: random-resized-crop + horizontal flip. Returns (uint8 HWC, valid).

    ``rng`` is the per-record generator grain derives from the sampler seed and the record's
    position, so the same seed gives the same crops. An undecodable file gives (zeros, False).
    """
    do_flip = bool(rng.random() < 0.5) if flip else False
    try:
        out = decode_crop_resize(
            data, lambda w, h: random_resized_crop_box(w, h, rng, scale, ratio), image_size
        )
    except Exception:  # noqa: BLE001 -- any decode failure is a masked, counted example
        return np.zeros((image_size, image_size, 3), np.uint8), False
    if do_flip:
        out = out[:, ::-1]
    return out, True


def eval_image(
    data: bytes, image_size: int, crop_pct: float = DEFAULT_CROP_PCT
) -> tuple[np.ndarray, bool]:
    """Eval transform: short side to ``image_size / crop_pct``, centre crop. (uint8 HWC, valid)."""
    try:
        out = decode_crop_resize(
            data, lambda w, h: center_crop_box(w, h, image_size, crop_pct), image_size
        )
    except Exception:  # noqa: BLE001
        return np.zeros((image_size, image_size, 3), np.uint8), False
    return out, True
