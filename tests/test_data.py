"""Tests for train/data.py, convfirst_jax/transforms.py and train/synthetic.py (numpy + PIL references)."""

from __future__ import annotations

import io
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from convfirst_jax import transforms
from train import data, synthetic

# Published ImageNet channel statistics (typed in independently of convfirst_jax/transforms.py).
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
# ../shared/data/imagenette beside the checkout (CI layout); CONVFIRST_IMAGENETTE overrides.
IMAGENETTE = pathlib.Path(os.environ.get(
    "CONVFIRST_IMAGENETTE",
    pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette"))


def denorm(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, np.float64) * STD + MEAN) * 255.0


def solid(color, size=(40, 32), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def jpeg_bytes(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ------------------------------------------------------------------ fixtures


def _colour(i: int) -> tuple[int, int, int]:
    """Distinct, well separated solid colours (index -> RGB)."""
    return (30 + 50 * (i % 5), 30 + 50 * ((i // 5) % 5), 40 + 60 * (i // 25))


@pytest.fixture(scope="module")
def colour_dir(tmp_path_factory) -> pathlib.Path:
    """train: 2 classes x 8 solid-colour JPEGs (16 colours); val: 7 colours. Colour = identity."""
    root = tmp_path_factory.mktemp("colours")
    for split, counts in (("train", (8, 8)), ("val", (4, 3))):
        k = 0 if split == "train" else 16
        for c, n in zip(("cls_a", "cls_b"), counts):
            (root / split / c).mkdir(parents=True)
            for _ in range(n):
                solid(_colour(k), (48, 40)).save(root / split / c / f"{k:03d}.JPEG", quality=95)
                k += 1
    return root


def _identify(batch_images: np.ndarray, candidates: range) -> list[int]:
    """Index of the nearest solid colour for each image (mean colour of its centre)."""
    cols = np.array([_colour(i) for i in candidates], np.float64)
    out = []
    for img in batch_images:
        q = img.shape[0] // 4
        m = denorm(img)[q:-q, q:-q].reshape(-1, 3).mean(0)
        d = np.abs(cols - m).max(1)
        assert d.min() < 6, f"image colour {m} is not one of the solid colours"
        out.append(candidates[int(d.argmin())])
    return out


@pytest.fixture(scope="module")
def messy_dir(tmp_path_factory) -> pathlib.Path:
    """Every colour mode and two broken files, in an ImageNet layout (12 train files)."""
    root = tmp_path_factory.mktemp("messy")
    a, b = root / "train" / "n001", root / "train" / "n002"
    for d in (a, b, root / "val" / "n002"):
        d.mkdir(parents=True)
    (root / "train" / ".hidden").mkdir()  # not a class
    (root / "train" / "README.txt").write_text("not a class")
    solid((200, 40, 40)).save(a / "rgb0.JPEG")
    solid((40, 200, 40)).save(a / "rgb1.jpg")
    solid((40, 40, 200)).save(a / "rgb2.JpEg")
    solid((90, 90, 90)).save(a / "rgb3.Png")
    solid(128, mode="L").save(a / "gray.JPEG")
    solid((0, 255, 255, 0), mode="CMYK").save(a / "cmyk.JPEG", quality=95)  # pure red in CMYK
    (a / "notes.txt").write_text("ignored: not an image extension")
    pal = solid((10, 200, 100)).quantize(colors=4)
    assert pal.mode == "P"
    pal.save(b / "palette.png")
    solid((250, 120, 0, 128), mode="RGBA").save(b / "rgba.PNG")
    full = jpeg_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
    (b / "truncated.JPEG").write_bytes(full[: len(full) // 2])
    (b / "garbage.JPEG").write_bytes(b"this is not an image at all" * 10)
    solid((220, 220, 30)).save(b / "rgb4.jpeg")
    solid((30, 220, 220)).save(b / "rgb5.JPEG")
    solid((100, 50, 150)).save(root / "val" / "n002" / "v0.JPEG")
    return root


@pytest.fixture(scope="module")
def small_synthetic(tmp_path_factory) -> pathlib.Path:
    return data.ensure_synthetic_dataset(
        tmp_path_factory.mktemp("cache"),
        num_classes=4,
        train_per_class=12,
        val_per_class=3,
        image_size=32,
    )


# ------------------------------------------------------------------ folders and errors


def test_class_names_sorted_folders_only(messy_dir):
    assert data.class_names(messy_dir) == ["n001", "n002"]
    paths, labels = data.list_images(messy_dir, "train")
    names = sorted(os.path.basename(p) for p in paths)
    assert len(paths) == 12 and "notes.txt" not in names and "rgb2.JpEg" in names
    assert labels == [0] * 6 + [1] * 6


def test_missing_and_empty_splits_raise(tmp_path, messy_dir):
    with pytest.raises(ValueError, match="does not exist"):
        data.class_names(tmp_path / "nowhere")
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        data.class_names(tmp_path)
    (tmp_path / "train" / "c0").mkdir()
    with pytest.raises(ValueError, match="contains no images"):
        data.build_train_loader(tmp_path, image_size=8, global_batch_size=1, num_workers=0)
    with pytest.raises(ValueError, match=str(tmp_path / "val")):
        data.build_eval_loader(tmp_path, image_size=8, batch_size=1, num_workers=0)


def test_val_class_not_in_train_raises(tmp_path):
    for split, cls in (("train", "a"), ("val", "zz")):
        (tmp_path / split / cls).mkdir(parents=True)
        solid((1, 2, 3)).save(tmp_path / split / cls / "x.JPEG")
    with pytest.raises(ValueError, match="not in"):
        data.build_eval_loader(tmp_path, image_size=8, batch_size=1, num_workers=0)


def test_bad_arguments_raise(colour_dir):
    with pytest.raises(ValueError, match="divisible"):
        data.build_train_loader(colour_dir, image_size=8, global_batch_size=6, shard_count=4)
    with pytest.raises(ValueError, match="shard_index"):
        data.build_train_loader(colour_dir, image_size=8, global_batch_size=4, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        data.build_train_loader(colour_dir, image_size=8, global_batch_size=64, num_workers=0)


# ------------------------------------------------------------------ decoding and transforms


def test_normalize_matches_published_imagenet_stats():
    img = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expect = (img / 255.0 - MEAN) / STD
    got = transforms.normalize(img)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expect, rtol=0, atol=2e-6)
    mean_px = np.round(MEAN * 255).astype(np.uint8)[None, None]
    assert np.abs(transforms.normalize(mean_px)).max() < 0.01


@pytest.mark.parametrize(
    "name, rgb",
    [
        ("n001/gray.JPEG", (128, 128, 128)),
        ("n001/cmyk.JPEG", (255, 0, 0)),
        ("n002/palette.png", (10, 200, 100)),
        ("n002/rgba.PNG", (250, 120, 0)),
        ("n001/rgb3.Png", (90, 90, 90)),
    ],
)
def test_colour_modes_convert_to_rgb(messy_dir, name, rgb):
    raw = (messy_dir / "train" / name).read_bytes()
    for out, ok in (
        transforms.eval_image(raw, 16),
        transforms.train_image(raw, 16, np.random.default_rng(0)),
    ):
        assert ok and out.shape == (16, 16, 3) and out.dtype == np.uint8
        np.testing.assert_allclose(out.reshape(-1, 3).mean(0), rgb, atol=4)


@pytest.mark.parametrize("name", ["truncated.JPEG", "garbage.JPEG"])
def test_broken_files_give_zero_image_not_crash(messy_dir, name):
    raw = (messy_dir / "train" / "n002" / name).read_bytes()
    for out, ok in (transforms.eval_image(raw, 16), transforms.train_image(raw, 16, np.random.default_rng(0))):
        assert not ok and out.shape == (16, 16, 3) and not out.any()
    assert transforms.eval_image(b"", 16)[1] is False


def test_random_resized_crop_box_ranges():
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(2000):
        l, t, r, b = transforms.random_resized_crop_box(300, 200, rng)
        assert 0 <= l < r <= 300 and 0 <= t < b <= 200
        areas.append((r - l) * (b - t) / 60000)
        ratios.append((r - l) / (b - t))
    areas, ratios = np.array(areas), np.array(ratios)
    assert areas.min() >= 0.075 and areas.max() <= 1.0
    # sides are rounded to integers; the smallest side is >= sqrt(0.08 * 60000 * 3/4) = 60 px,
    # so rounding moves the ratio by at most a factor (1 + 0.5/60) / (1 - 0.5/60)
    slack = (1 + 0.5 / 60) / (1 - 0.5 / 60)
    assert ratios.min() >= 0.75 / slack and ratios.max() <= 4 / 3 * slack
    assert areas.min() < 0.15 and areas.max() > 0.8  # both ends of the scale range reached
    # on a square image acceptance is symmetric in log-ratio, so the log-uniform draw has
    # median 0 (std of the sample median ~ 0.005 for 2000 draws)
    sq = [transforms.random_resized_crop_box(300, 300, rng) for _ in range(2000)]
    log_r = np.log([(r - l) / (b - t) for l, t, r, b in sq])
    assert abs(np.median(log_r)) < 0.02 and log_r.min() < -0.25 and log_r.max() > 0.25
    # a 20:1 strip never fits a 4/3 crop of large area: fallback = centre crop, ratio clamped
    rng_bad = np.random.default_rng(0)
    box = transforms.random_resized_crop_box(400, 20, rng_bad, scale=(0.9, 1.0))
    # reference: h = 20, w = round(20 * 4/3) = 27, left = (400 - 27) // 2 = 186
    assert box == (186, 0, 213, 20)


def test_eval_crop_geometry_matches_resize_then_centre_crop():
    # R channel = x coordinate, G = y: bilinear resampling of a linear ramp stays linear.
    w, h = 160, 128
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    out, ok = transforms.eval_image(buf.getvalue(), 56, crop_pct=0.875)
    assert ok
    # short side 128 -> 64 (= floor(56 / 0.875)): factor 2; crop 56 of 80 x 64 -> offsets (12, 4)
    # in resized pixels = (24, 8) in source pixels. Output pixel j centre -> source 24 + 2 j + 0.5.
    j = np.arange(4, 52)
    np.testing.assert_allclose(out[28, j, 0], 24 + 2 * j + 0.5, atol=1.0)
    np.testing.assert_allclose(out[j, 28, 1], 8 + 2 * j + 0.5, atol=1.0)


def test_train_flip_and_full_crop():
    # scale=(1,1) and the image's own ratio make the crop the whole image: output = resize or mirror.
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, :8] = 255  # bright left edge
    raw = jpeg_bytes(Image.fromarray(img))
    flips = set()
    for seed in range(12):
        out, ok = transforms.train_image(raw, 16, np.random.default_rng(seed), scale=(1, 1), ratio=(1, 1))
        assert ok
        left, right = out[:, :4].mean(), out[:, -4:].mean()
        assert max(left, right) > 200 and min(left, right) < 40
        flips.add(bool(right > left))
    assert flips == {True, False}


# ------------------------------------------------------------------ loaders


@pytest.fixture
def odd_dir(tmp_path) -> pathlib.Path:
    """A hand-made ImageNet-style folder with every odd case (see the test below)."""
    root = tmp_path / "odd"
    a, b, c = (root / "train" / n for n in ("a_cls", "b_cls", "c_empty"))
    for d in (a, b, c, root / "val" / "a_cls", a / "nested" / "deeper", a / ".ipynb_checkpoints"):
        d.mkdir(parents=True)
    solid((200, 40, 40)).save(a / "x0.JPEG")
    solid((40, 200, 40)).save(a / "nested" / "x1.jpg")  # nested: belongs to a_cls
    solid((40, 40, 200)).save(a / "nested" / "deeper" / "x2.png")
    solid((250, 250, 10)).save(a / "x3.webp", "WEBP", lossless=True)
    solid((1, 2, 3)).save(a / ".ipynb_checkpoints" / "x4.JPEG")  # hidden folder: skipped
    (a / "._x0.JPEG").write_bytes(b"AppleDouble")  # hidden file: skipped
    (a / "notes.txt").write_text("not an image")
    os.symlink(a / "missing.JPEG", a / "dangling.JPEG")
    os.symlink(a / "x0.JPEG", b / "link.JPEG")  # a symlink to an image is used
    solid((10, 250, 250)).save(b / "y0.WEBP", "WEBP", lossless=True)
    (root / "train" / "stray.JPEG").write_bytes(b"outside any class")
    solid((9, 9, 9)).save(root / "val" / "a_cls" / "v0.JPEG")
    return root


def test_scan_reports_used_and_skipped_files_by_reason(odd_dir):
    with pytest.raises(ValueError, match=r"1 class folder\(s\) of .* contain no images: c_empty; "
                       r"remove them, or pass --config.allow_empty_classes=True"):
        data.scan_split(odd_dir, "train")
    with pytest.raises(ValueError, match="c_empty"):
        data.build_train_loader(odd_dir, image_size=8, global_batch_size=2, num_workers=0)
    scan = data.scan_split(odd_dir, "train", allow_empty_classes=True)
    assert scan.class_names == ["a_cls", "b_cls", "c_empty"]
    assert scan.per_class == {"a_cls": 4, "b_cls": 2, "c_empty": 0} and scan.nested == 2
    assert scan.empty_classes == ["c_empty"]
    names = [os.path.relpath(p, odd_dir / "train") for p in scan.paths]
    assert names == ["a_cls/nested/deeper/x2.png", "a_cls/nested/x1.jpg", "a_cls/x0.JPEG",
                     "a_cls/x3.webp", "b_cls/link.JPEG", "b_cls/y0.WEBP"]
    assert scan.labels == [0, 0, 0, 0, 1, 1]
    assert scan.skipped == {"dangling symlinks": 1, "files outside class folders": 1,
                            "hidden files": 1, "hidden folders": 1,
                            "not an image extension (.txt)": 1}
    assert scan.examples["dangling symlinks"].endswith("dangling.JPEG")
    line = scan.describe()
    assert "6 images in 3 class folders (2 in nested sub-folders)" in line
    assert "1 dangling symlinks (e.g." in line and "1 not an image extension (.txt)" in line
    # WebP decodes (colour preserved) and every used file is readable.
    assert data.probe_readable(scan.paths) == (6, 0, None)
    img, ok = transforms.eval_image((odd_dir / "train" / "a_cls" / "x3.webp").read_bytes(), 16,
                                    1.0)
    assert ok and np.abs(img.reshape(-1, 3).mean(0) - (250, 250, 10)).max() < 2
    loader = data.build_train_loader(odd_dir, image_size=8, global_batch_size=2, num_workers=0,
                                     allow_empty_classes=True)
    batches = _take(iter(loader), 3)  # one epoch
    assert sorted(np.concatenate([x["label"] for x in batches]).tolist()) == [0, 0, 0, 0, 1, 1]
    assert all(x["valid"].all() for x in batches)


def test_check_readable_refuses_a_folder_of_unreadable_files(tmp_path):
    for i in range(3):
        (tmp_path / "train" / "c").mkdir(parents=True, exist_ok=True)
        (tmp_path / "train" / "c" / f"{i}.JPEG").write_bytes(b"garbage")
    scan = data.scan_split(tmp_path, "train")
    assert data.probe_readable(scan.paths)[:2] == (3, 3)
    with pytest.raises(ValueError, match=r"all 3 image files of .*train' are unreadable"):
        data.check_readable(scan)
    solid((1, 2, 3)).save(tmp_path / "train" / "c" / "ok.png")
    assert data.check_readable(data.scan_split(tmp_path, "train")) == (4, 3)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_train_loader_messy_batches_and_invalid_count(messy_dir):
    loader = data.build_train_loader(messy_dir, image_size=24, global_batch_size=4, seed=3, num_workers=0)
    assert data.steps_per_epoch(messy_dir, 4) == 3
    epoch = _take(iter(loader), 3)  # one epoch: every file once
    for b in epoch:
        assert set(b) == {"image", "label", "valid"}
        assert b["image"].shape == (4, 24, 24, 3) and b["image"].dtype == np.float32
        assert b["label"].dtype == np.int32 and b["valid"].dtype == np.float32
    valid = np.concatenate([b["valid"] for b in epoch])
    images = np.concatenate([b["image"] for b in epoch])
    labels = np.concatenate([b["label"] for b in epoch])
    assert sorted(labels.tolist()) == [0] * 6 + [1] * 6
    assert (valid == 0).sum() == 2  # truncated + garbage
    assert not images[valid == 0].any() and np.all(labels[valid == 0] == 1)
    assert np.isfinite(images).all() and np.abs(images[valid == 1]).sum() > 0


def test_loaders_built_from_a_scan_equal_loaders_that_scan(messy_dir):
    """The training start-up walks each split once and hands the scan on."""
    train_scan, val_scan = data.scan_split(messy_dir, "train"), data.scan_split(messy_dir, "val")
    assert data.steps_per_epoch(messy_dir, 4, scan=train_scan) == data.steps_per_epoch(messy_dir, 4)
    kw = dict(image_size=16, global_batch_size=4, seed=3, num_workers=0)
    ref = _take(iter(data.build_train_loader(messy_dir, **kw)), 3)
    got = _take(iter(data.build_train_loader(messy_dir, scan=train_scan, **kw)), 3)
    for a, b in zip(ref, got):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    ekw = dict(image_size=16, batch_size=4, num_workers=0)
    ref = list(data.build_eval_loader(messy_dir, **ekw))
    got_loader = data.build_eval_loader(messy_dir, scan=val_scan, **ekw)
    assert got_loader.num_examples == len(val_scan.paths)
    for a, b in zip(ref, list(got_loader), strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_train_epoch_covers_each_file_and_seed_determinism(colour_dir):
    def first_epoch(seed):
        loader = data.build_train_loader(colour_dir, image_size=16, global_batch_size=4, seed=seed, num_workers=0)
        return [b for b in _take(iter(loader), 4)]

    a, a2, other = first_epoch(0), first_epoch(0), first_epoch(1)
    ids = [i for b in a for i in _identify(b["image"], range(16))]
    assert sorted(ids) == list(range(16))  # epoch-shuffled, every file once
    labels = np.concatenate([b["label"] for b in a])
    np.testing.assert_array_equal(labels, [0 if i < 8 else 1 for i in ids])
    for x, y in zip(a, a2):
        np.testing.assert_array_equal(x["image"], y["image"])
    assert ids != [i for b in other for i in _identify(b["image"], range(16))]


def test_shards_are_disjoint_and_cover_epoch(colour_dir):
    seen = []
    for shard in range(2):
        loader = data.build_train_loader(
            colour_dir, image_size=16, global_batch_size=8, seed=5, num_workers=0, shard_index=shard, shard_count=2
        )
        batches = _take(iter(loader), 2)  # 16 files / 2 shards / local batch 4 = 2 batches per epoch
        assert batches[0]["image"].shape[0] == 4
        seen.append([i for b in batches for i in _identify(b["image"], range(16))])
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(16))


def test_train_iterator_state_resume(small_synthetic):
    kw = dict(image_size=16, global_batch_size=8, seed=7, num_workers=0)
    it = iter(data.build_train_loader(small_synthetic, **kw))  # 48 images: 6 batches per epoch
    _take(it, 5)
    state = it.get_state()
    expected = _take(it, 3)  # crosses the epoch boundary
    it2 = iter(data.build_train_loader(small_synthetic, **kw))
    it2.set_state(state)
    for want, got in zip(expected, _take(it2, 3)):
        for k in want:
            np.testing.assert_array_equal(want[k], got[k])


def test_train_state_resume_with_worker_processes(small_synthetic):
    kw = dict(image_size=16, global_batch_size=8, seed=2, num_workers=2)
    it = iter(data.build_train_loader(small_synthetic, **kw))
    _take(it, 3)
    state = it.get_state()
    expected = [{k: np.array(v) for k, v in b.items()} for b in _take(it, 4)]  # crosses epoch
    del it
    it2 = iter(data.build_train_loader(small_synthetic, **kw))
    it2.set_state(state)
    for want, got in zip(expected, _take(it2, 4)):
        for k in want:
            np.testing.assert_array_equal(want[k], got[k])
    del it2


def test_workers_refused_for_stdin_program(colour_dir, monkeypatch):
    import __main__

    monkeypatch.setattr(__main__, "__file__", "<stdin>", raising=False)
    with pytest.raises(ValueError, match="num_workers=0"):
        data.build_train_loader(colour_dir, image_size=8, global_batch_size=4, num_workers=2)


def test_eval_loader_covers_val_once_with_padding(colour_dir):
    loader = data.build_eval_loader(colour_dir, image_size=16, batch_size=3, num_workers=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 3 and loader.num_examples == 7
    valid = np.concatenate([b["valid"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(valid, [1] * 7 + [0] * 2)
    assert not images[7:].any()
    assert _identify(images[:7], range(16, 23)) == list(range(16, 23))  # file order, each once
    np.testing.assert_array_equal(labels[:7], [0, 0, 0, 0, 1, 1, 1])
    assert list(loader)[0]["image"].tobytes() == batches[0]["image"].tobytes()  # re-iterable


def test_eval_loader_with_worker_processes_matches_in_process(colour_dir):
    ref = list(data.build_eval_loader(colour_dir, image_size=16, batch_size=4, num_workers=0))
    got = list(data.build_eval_loader(colour_dir, image_size=16, batch_size=4, num_workers=2))
    assert len(ref) == len(got) == 2
    for r, g in zip(ref, got):
        for k in r:
            np.testing.assert_array_equal(r[k], g[k])


# ------------------------------------------------------------------ synthetic dataset


def test_synthetic_layout_modes_and_reuse(small_synthetic):
    root = small_synthetic
    assert root.name.startswith(synthetic.VERSION) and (root / "manifest.json").is_file()
    classes = data.class_names(root)
    assert classes == [synthetic.class_folder(c) for c in range(4)]
    assert len({synthetic.class_spec(c) for c in range(synthetic.max_classes())}) == synthetic.max_classes()
    assert len({synthetic.class_spec(c)[0] for c in range(10)}) == 10  # default classes: distinct shapes
    for split, n in (("train", 12), ("val", 3)):
        for c in classes:
            assert len(list((root / split / c).iterdir())) == n
    files = list((root / "train").rglob("*"))
    modes = {Image.open(f).mode for f in files if f.is_file()}
    assert {"RGB", "L"} <= modes and any(f.suffix == ".png" for f in files)
    stamp = (root / "manifest.json").stat().st_mtime_ns
    again = data.ensure_synthetic_dataset(
        root.parent, num_classes=4, train_per_class=12, val_per_class=3, image_size=32
    )
    assert again == root and (root / "manifest.json").stat().st_mtime_ns == stamp
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_synthetic_is_deterministic(tmp_path, small_synthetic):
    other = data.ensure_synthetic_dataset(
        tmp_path, num_classes=2, train_per_class=12, val_per_class=1, image_size=32
    )
    for rel in ("train/c00_red_solid_circle", "train/c01_blue_hatched_square"):
        a = sorted((small_synthetic / rel).iterdir())
        b = sorted((other / rel).iterdir())
        assert [p.name for p in a] == [p.name for p in b]
        assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))


def test_synthetic_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        data.ensure_synthetic_dataset(tmp_path, num_classes=1000)
    with pytest.raises(ValueError, match="image_size"):
        data.ensure_synthetic_dataset(tmp_path, image_size=0)


# ------------------------------------------------------------------ real data


def test_imagenette_subset_loads(tmp_path):
    if not (IMAGENETTE / "train").is_dir():
        pytest.skip(f"{IMAGENETTE} not present")
    wnids = data.class_names(IMAGENETTE)[:2]
    for split, n in (("train", 4), ("val", 2)):
        for w in wnids:
            (tmp_path / split / w).mkdir(parents=True)
            for f in sorted((IMAGENETTE / split / w).iterdir())[:n]:
                (tmp_path / split / w / f.name).symlink_to(f)
    b = next(iter(data.build_train_loader(tmp_path, image_size=64, global_batch_size=8, num_workers=0)))
    assert b["image"].shape == (8, 64, 64, 3) and b["valid"].all()
    ev = list(data.build_eval_loader(tmp_path, image_size=64, batch_size=4, num_workers=0))
    assert len(ev) == 1 and ev[0]["valid"].all()
    # natural photos: per-channel mean of normalised pixels is O(1), std roughly 1
    for x in (b["image"], ev[0]["image"]):
        assert np.abs(x.mean()) < 1.0 and 0.3 < x.std() < 2.0
