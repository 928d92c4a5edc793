"""Embedded synthetic ImageNet-style dataset: small, learnable, real JPEG files on disk.

Every class is one (shape, colour palette, fill texture) combination, e.g. "red dotted star".
Each image draws one or two instances of its class's object at a random position, size and
rotation, with per-image colour jitter, on a random noisy gradient background with a little
clutter (small lines and blobs). About 10% of the images are stored as grayscale JPEGs (colour
gone: shape and texture still decide), a few as CMYK JPEGs and as palette / RGB PNGs, so the
loader's mode-conversion paths are exercised on every run.

The default set (10 classes x 260 train + 50 val at 96 px, about 3,100 files, ~19 MB) is written
once to ``~/.cache/convfirst_jax/synthetic-v1`` (atomically: generated in a temporary sibling
folder, then renamed) and reused afterwards. Generation is seeded and deterministic.

numpy + PIL only (no jax, no grain).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

VERSION = "synthetic-v1"

SHAPES = (
    "circle", "square", "triangle", "cross", "ring",
    "stripes", "star", "diamond", "hexagon", "crescent",
)  # fmt: skip
# name, primary RGB, secondary RGB (the texture's second colour)
PALETTES = (
    ("red", (215, 35, 35), (250, 215, 60)),
    ("blue", (35, 80, 225), (130, 225, 250)),
    ("green", (35, 165, 55), (205, 250, 120)),
    ("purple", (145, 45, 200), (250, 150, 215)),
    ("orange", (245, 135, 20), (95, 50, 15)),
    ("white", (238, 238, 238), (45, 45, 45)),
)
TEXTURES = ("solid", "hatched", "dotted", "checker")

DEFAULTS = dict(num_classes=10, train_per_class=260, val_per_class=50, image_size=96, seed=0)
_SPLIT_IDS = {"train": 0, "val": 1}


def default_cache_dir() -> pathlib.Path:
    """``$CONVFIRST_JAX_CACHE``, else ``$XDG_CACHE_HOME/convfirst_jax``, else ``~/.cache/convfirst_jax``."""
    if os.environ.get("CONVFIRST_JAX_CACHE"):
        return pathlib.Path(os.environ["CONVFIRST_JAX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return pathlib.Path(base).expanduser() / "convfirst_jax"


def class_spec(index: int) -> tuple[str, str, str]:
    """(shape, palette, texture) of class ``index``; all distinct for index < len(SHAPES)*len(PALETTES).

    Shapes cycle fastest, so the first 10 classes all differ in shape; palette and texture
    are offset per cycle so that no two classes share all three attributes.
    """
    s, k = index % len(SHAPES), index // len(SHAPES)
    palette = (s + k * (len(SHAPES) + 1)) % len(PALETTES)
    texture = (s + 2 * k) % len(TEXTURES)
    return SHAPES[s], PALETTES[palette][0], TEXTURES[texture]


def class_folder(index: int) -> str:
    shape, palette, texture = class_spec(index)
    return f"c{index:02d}_{palette}_{texture}_{shape}"


def max_classes() -> int:
    return len(SHAPES) * len(PALETTES)


# ---------------------------------------------------------------- drawing


def _rot(points: np.ndarray, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return points @ np.array([[c, s], [-s, c]])


def _regular(n: int, inner: float | None = None) -> np.ndarray:
    """Unit regular n-gon (or n-pointed star with the given inner radius), first vertex up."""
    if inner is None:
        ang = -math.pi / 2 + 2 * math.pi * np.arange(n) / n
        return np.stack([np.cos(ang), np.sin(ang)], 1)
    ang = -math.pi / 2 + math.pi * np.arange(2 * n) / n
    rad = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


_POLYGONS = {
    "square": [_rect(-0.8, -0.8, 0.8, 0.8)],
    "triangle": [_regular(3) * 1.1 + np.array([0.0, 0.15])],
    "cross": [_rect(-1, -0.3, 1, 0.3), _rect(-0.3, -1, 0.3, 1)],
    "stripes": [_rect(-0.95, -0.9, -0.55, 0.9), _rect(-0.2, -0.9, 0.2, 0.9), _rect(0.55, -0.9, 0.95, 0.9)],
    "star": [_regular(5, inner=0.45)],
    "diamond": [np.array([[0, -1.0], [0.62, 0], [0, 1.0], [-0.62, 0]])],
    "hexagon": [_regular(6) * 0.95],
}  # fmt: skip


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, theta: float) -> None:
    """Draws a filled unit shape (value 255) scaled by r, rotated by theta, centred at (cx, cy)."""
    if shape in ("circle", "ring", "crescent"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if shape == "ring":
            ri = 0.55 * r
            draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
        elif shape == "crescent":
            ox, oy = 0.45 * r * math.cos(theta), 0.45 * r * math.sin(theta)
            ri = 0.85 * r
            draw.ellipse([cx + ox - ri, cy + oy - ri, cx + ox + ri, cy + oy + ri], fill=0)
        return
    for poly in _POLYGONS[shape]:
        pts = _rot(poly, theta) * r + np.array([cx, cy])
        draw.polygon([tuple(p) for p in pts], fill=255)


def _texture(size: int, texture: str, primary: np.ndarray, secondary: np.ndarray, rng) -> np.ndarray:
    """(size, size, 3) float fill: ``primary`` with a ``secondary`` pattern of random phase/angle."""
    if texture == "solid":
        return np.broadcast_to(primary, (size, size, 3)).astype(np.float32)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    a = float(rng.uniform(0, math.pi))
    u = x * math.cos(a) + y * math.sin(a) + rng.uniform(0, size)
    v = -x * math.sin(a) + y * math.cos(a) + rng.uniform(0, size)
    period = size * rng.uniform(0.07, 0.11)
    if texture == "hatched":
        pat = (u % period) < 0.45 * period
    elif texture == "dotted":
        du, dv = u % period - period / 2, v % period - period / 2
        pat = du * du + dv * dv < (0.3 * period) ** 2
    elif texture == "checker":
        pat = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    else:
        raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")
    return np.where(pat[..., None], secondary, primary).astype(np.float32)


def _background(size: int, rng) -> np.ndarray:
    """Desaturated two-colour linear gradient in a random direction, plus Gaussian noise."""
    c = rng.uniform(25, 200, size=(2, 3)).astype(np.float32)
    c = 0.5 * c + 0.5 * c.mean(axis=1, keepdims=True)
    a = rng.uniform(0, 2 * math.pi)
    ramp = (np.arange(size, dtype=np.float32) / max(size - 1, 1)) - 0.5
    t = np.clip(0.5 + ramp[None, :] * math.cos(a) + ramp[:, None] * math.sin(a), 0, 1)[..., None]
    img = c[0] + (c[1] - c[0]) * t
    noise = rng.standard_normal(size=img.shape, dtype=np.float32)
    noise *= np.float32(rng.uniform(3, 18))
    return img + noise


def _clutter(img: Image.Image, rng) -> None:
    draw = ImageDraw.Draw(img)
    size = img.size[0]
    for _ in range(int(rng.integers(0, 4))):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        p = rng.uniform(0, size, 4)
        if rng.random() < 0.5:
            draw.line([tuple(p[:2]), tuple(p[2:])], fill=col, width=int(rng.integers(1, 3)))
        else:
            rr = size * rng.uniform(0.02, 0.06)
            draw.ellipse([p[0] - rr, p[1] - rr, p[0] + rr, p[1] + rr], fill=col)


def render_image(class_index: int, image_size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of class ``class_index`` (see module docstring)."""
    shape, palette_name, texture = class_spec(class_index)
    _, primary, secondary = next(p for p in PALETTES if p[0] == palette_name)
    bg = Image.fromarray(np.clip(_background(image_size, rng), 0, 255).astype(np.uint8), "RGB")
    _clutter(bg, rng)
    canvas = np.asarray(bg, dtype=np.float32)
    ss = 2  # supersampled mask for anti-aliased edges
    for _ in range(1 if rng.random() < 0.8 else 2):
        r = image_size * rng.uniform(0.18, 0.34)
        cx, cy = rng.uniform(0.8 * r, image_size - 0.8 * r, size=2)
        mask_img = Image.new("L", (image_size * ss, image_size * ss), 0)
        _draw_shape(ImageDraw.Draw(mask_img), shape, cx * ss, cy * ss, r * ss, rng.uniform(0, 2 * math.pi))
        mask = np.asarray(mask_img.resize((image_size, image_size), Image.Resampling.BOX), np.float32)
        mask = (mask * np.float32(1 / 255))[..., None]
        jitter = rng.uniform(-22, 22, size=3)
        fill = _texture(
            image_size, texture, np.asarray(primary) + jitter, np.asarray(secondary) + jitter, rng
        )
        shade = np.float32(rng.uniform(0.8, 1.1))
        canvas = canvas + mask * (fill * shade - canvas)
    canvas += np.float32(3) * rng.standard_normal(size=canvas.shape, dtype=np.float32)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")


def _save(img: Image.Image, stem: pathlib.Path, serial: int, rng) -> None:
    """Mostly RGB JPEG; every 29th a PNG (alternating palette / RGB), every 37th CMYK; 10% gray."""
    if serial % 29 == 7:
        if (serial // 29) % 2 == 0:
            img = img.quantize(colors=64)
        img.save(stem.with_suffix(".png"), format="PNG")
        return
    if serial % 37 == 11:
        img = img.convert("CMYK")
    elif rng.random() < 0.1:
        img = img.convert("L")
    img.save(stem.with_suffix(".JPEG"), format="JPEG", quality=int(rng.integers(80, 96)))


def generate(
    out_dir: str | os.PathLike,
    *,
    num_classes: int,
    train_per_class: int,
    val_per_class: int,
    image_size: int,
    seed: int,
) -> None:
    """Writes ``out_dir/{train,val}/<class>/*.{JPEG,png}``; each image seeded by (seed, split, class, i)."""
    out = pathlib.Path(out_dir)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c in range(num_classes):
            folder = out / split / class_folder(c)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                rng = np.random.default_rng([seed, _SPLIT_IDS[split], c, i])
                img = render_image(c, image_size, rng)
                serial = c * per_class + i
                _save(img, folder / f"{split}_{c:02d}_{i:05d}", serial, rng)


def ensure_synthetic_dataset(
    cache_dir: str | os.PathLike | None = None,
    *,
    num_classes: int = DEFAULTS["num_classes"],
    train_per_class: int = DEFAULTS["train_per_class"],
    val_per_class: int = DEFAULTS["val_per_class"],
    image_size: int = DEFAULTS["image_size"],
    seed: int = DEFAULTS["seed"],
) -> pathlib.Path:
    """Returns the root of the synthetic dataset, generating it on first use.

    ``cache_dir`` is the parent folder (default :func:`default_cache_dir`). The dataset folder is
    ``cache_dir/synthetic-v1`` for the default arguments, otherwise
    ``cache_dir/synthetic-v1-c{classes}-t{train}-v{val}-s{size}-seed{seed}``. Generation writes
    into a temporary sibling and renames it into place, so a crashed or concurrent run never
    leaves a half-written dataset behind; later calls return the existing folder.
    """
    for name, value, lo in (
        ("num_classes", num_classes, 2),
        ("train_per_class", train_per_class, 1),
        ("val_per_class", val_per_class, 1),
        ("image_size", image_size, 8),
    ):
        if not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    if num_classes > max_classes():
        raise ValueError(
            f"num_classes={num_classes} exceeds the {max_classes()} distinct "
            "(shape, palette, texture) classes the synthetic generator defines"
        )
    params = dict(
        num_classes=int(num_classes),
        train_per_class=int(train_per_class),
        val_per_class=int(val_per_class),
        image_size=int(image_size),
        seed=int(seed),
    )
    root = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = VERSION
    if params != DEFAULTS:
        name += (
            f"-c{num_classes}-t{train_per_class}-v{val_per_class}-s{image_size}-seed{seed}"
        )
    final = root / name
    if (final / "manifest.json").is_file():
        return final
    if final.exists():
        raise ValueError(
            f"{str(final)!r} exists but has no manifest.json (not written by this generator, or "
            "damaged); delete it and call again to regenerate"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        t0 = time.perf_counter()
        generate(tmp, **params)
        manifest = dict(
            version=VERSION,
            **params,
            classes={class_folder(c): dict(zip(("shape", "palette", "texture"), class_spec(c)))
                     for c in range(num_classes)},
            generation_seconds=round(time.perf_counter() - t0, 2),
        )  # fmt: skip
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "manifest.json").is_file():  # lost a race -> use the winner's copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
