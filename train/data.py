"""ImageNet-style folder datasets as grain pipelines (train: infinite + checkpointable; eval: one pass).

Layout: ``data_dir/{train,val}/<class>/**/*.{JPEG,jpg,jpeg,png,webp}`` (extensions
case-insensitive; images in nested sub-folders of a class folder belong to that class, as in
timm / torchvision ``ImageFolder``). Classes are the sorted non-hidden folder names of
``data_dir/train``; ``val`` must use a subset of them. :func:`scan_split` says what it used and
what it skipped, by reason (hidden, other extension, dangling symlink, outside a class folder);
an empty train class folder is an error unless ``allow_empty_classes``.

Batches are dicts of numpy arrays::

    {"image": float32 (B, H, W, 3), ImageNet mean/std normalised, NHWC,
     "label": int32 (B,),
     "valid": float32 (B,)}   # 0 for an unreadable file (zero image) or eval padding

The training loop masks ``valid == 0`` out of the loss and metrics and counts those examples.
Transforms (random-resized-crop + flip for train, resize + centre crop for eval) are in
``convfirst_jax/transforms.py``; the embedded synthetic dataset is in ``train/synthetic.py``.

Benchmark the loader (prints images/s)::

    python -m train.data --data-dir DIR --image-size 64 --batch-size 64 --num-workers 2 --batches 50
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import stat
import time
from collections.abc import Iterator

import grain
import numpy as np

from convfirst_jax import transforms
from train.synthetic import ensure_synthetic_dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderSource",
    "EvalLoader",
    "class_names",
    "list_images",
    "scan_split",
    "SplitScan",
    "probe_readable",
    "check_readable",
    "build_train_loader",
    "build_eval_loader",
    "steps_per_epoch",
    "ensure_synthetic_dataset",
]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".webp")
_FIX_HINT = (
    "expected the ImageNet folder layout DATA_DIR/{train,val}/<class>/*.JPEG; point data_dir at "
    "such a folder, or leave data_dir empty for the embedded synthetic dataset "
    "(train.data.ensure_synthetic_dataset())"
)
# How many files per split :func:`probe_readable` decodes at start-up.
PROBE_FILES = 64


def _split_dir(data_dir: str | os.PathLike, split: str) -> pathlib.Path:
    path = pathlib.Path(data_dir).expanduser() / split
    if not path.is_dir():
        raise ValueError(f"split folder {str(path)!r} does not exist; {_FIX_HINT}")
    return path


def _class_dirs(split_path: pathlib.Path) -> list[str]:
    return sorted(
        e.name for e in os.scandir(split_path) if e.is_dir() and not e.name.startswith(".")
    )


def class_names(data_dir: str | os.PathLike) -> list[str]:
    """Sorted class folder names of ``data_dir/train`` (label i = i-th name).

    Hidden folders (name starting with ".") are not classes.
    """
    path = _split_dir(data_dir, "train")
    names = _class_dirs(path)
    if not names:
        raise ValueError(f"split folder {str(path)!r} has no class sub-folders; {_FIX_HINT}")
    return names


@dataclasses.dataclass
class SplitScan:
    """What :func:`scan_split` found in one split folder.

    Attributes:
      split_dir: the folder scanned (``data_dir/split``).
      class_names: the train class names (label i = i-th name).
      paths, labels: the image files used, sorted by path within each class, and their labels.
      per_class: images used per class folder of this split (0 for an empty class).
      nested: how many of the used images sit in sub-folders of a class folder.
      skipped: files (and folders) not used, by reason -> count.
      examples: reason -> one example path.
    """

    split_dir: str
    class_names: list[str]
    paths: list[str]
    labels: list[int]
    per_class: dict[str, int]
    nested: int
    skipped: dict[str, int]
    examples: dict[str, str]

    @property
    def empty_classes(self) -> list[str]:
        return [c for c, n in self.per_class.items() if n == 0]

    def describe(self) -> str:
        """One line: classes, images used, skipped by reason."""
        used = (f"{len(self.paths)} images in {len(self.per_class)} class folders"
                + (f" ({self.nested} in nested sub-folders)" if self.nested else ""))
        skipped = "; ".join(f"{n} {reason} (e.g. {self.examples[reason]})"
                            for reason, n in sorted(self.skipped.items()))
        return f"{self.split_dir}: {used}; skipped: {skipped or 'none'}"


def _skip(skipped: dict[str, int], examples: dict[str, str], reason: str, path: str) -> None:
    skipped[reason] = skipped.get(reason, 0) + 1
    examples.setdefault(reason, path)


def _file_mode(path: str) -> int | None:
    """``st_mode`` of what ``path`` points to (one stat), None when it does not resolve."""
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


def _class_files(class_dir: str, skipped: dict[str, int], examples: dict[str, str]
                 ) -> tuple[list[str], int]:
    """Image files under ``class_dir``, nested sub-folders included (as timm / torchvision
    ``ImageFolder``); symlinks are followed, each real folder once. Returns (paths, nested)."""
    files: list[str] = []
    nested = 0
    seen: set[str] = set()
    for root, dirs, names in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            _skip(skipped, examples, "folders already visited (symlink loop)", root)
            continue
        seen.add(real)
        for d in [d for d in dirs if d.startswith(".")]:
            _skip(skipped, examples, "hidden folders", os.path.join(root, d))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            path = os.path.join(root, name)
            ext = os.path.splitext(name)[1].lower()
            if name.startswith("."):
                _skip(skipped, examples, "hidden files", path)
            elif ext not in IMAGE_EXTENSIONS:
                _skip(skipped, examples, f"not an image extension ({ext or 'none'})", path)
            elif (mode := _file_mode(path)) is None:
                _skip(skipped, examples, "dangling symlinks", path)
            elif not stat.S_ISREG(mode):
                _skip(skipped, examples, "not regular files", path)
            else:
                files.append(path)
                nested += root != class_dir
    return sorted(files), nested


def scan_split(data_dir: str | os.PathLike, split: str, *, allow_empty_classes: bool = False
               ) -> SplitScan:
    """Scan ``data_dir/split``: the images used (with labels) and what was skipped, by reason.

    Rules: classes are the sorted non-hidden folder names of ``data_dir/train``; images are files
    with an extension in :data:`IMAGE_EXTENSIONS` (case-insensitive) anywhere below a class
    folder (nested sub-folders count for that class); hidden files / folders, other extensions,
    dangling symlinks and files directly in the split folder are skipped and counted.

    Raises ValueError (one message, with the fix) for a missing split, a split without images,
    a ``val`` class that ``train`` lacks, or -- unless ``allow_empty_classes`` -- a train class
    folder without images.
    """
    names = class_names(data_dir)
    path = _split_dir(data_dir, split)
    index = {name: i for i, name in enumerate(names)}
    split_classes = _class_dirs(path)
    unknown = [c for c in split_classes if c not in index]
    if unknown:
        raise ValueError(
            f"{str(path)!r} has class folders {unknown[:5]} that are not in "
            f"{str(pathlib.Path(data_dir) / 'train')!r}; every {split} class must also be a "
            "train class (labels come from the sorted train folder names)"
        )
    skipped: dict[str, int] = {}
    examples: dict[str, str] = {}
    for e in sorted(os.scandir(path), key=lambda e: e.name):
        if e.name.startswith("."):
            _skip(skipped, examples, "hidden files" if not e.is_dir() else "hidden folders", e.path)
        elif not e.is_dir():
            _skip(skipped, examples, "files outside class folders", e.path)
    paths: list[str] = []
    labels: list[int] = []
    per_class: dict[str, int] = {}
    nested = 0
    for cls in split_classes:
        files, n_nested = _class_files(str(path / cls), skipped, examples)
        per_class[cls] = len(files)
        nested += n_nested
        paths.extend(files)
        labels.extend([index[cls]] * len(files))
    if not paths:
        raise ValueError(
            f"split folder {str(path)!r} contains no images with extensions "
            f"{IMAGE_EXTENSIONS} (case-insensitive); {_FIX_HINT}"
        )
    scan = SplitScan(str(path), names, paths, labels, per_class, nested, skipped, examples)
    if split == "train" and scan.empty_classes and not allow_empty_classes:
        empty = scan.empty_classes
        raise ValueError(
            f"{len(empty)} class folder(s) of {str(path)!r} contain no images: "
            f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}; remove them, or pass "
            "--config.allow_empty_classes=True to keep them as classes without training images"
        )
    return scan


def list_images(data_dir: str | os.PathLike, split: str, *, allow_empty_classes: bool = False
                ) -> tuple[list[str], list[int]]:
    """All image files of ``split`` in a fixed (sorted) order, with their integer labels.

    The rules and errors are those of :func:`scan_split`.
    """
    scan = scan_split(data_dir, split, allow_empty_classes=allow_empty_classes)
    return scan.paths, scan.labels


def probe_readable(paths: list[str], sample: int = PROBE_FILES) -> tuple[int, int, str | None]:
    """Decode up to ``sample`` evenly spaced files of ``paths``.

    Returns (files decoded, how many of them were unreadable, one unreadable path or None).
    A cheap start-up check: the loaders mask and count every unreadable file during training.
    """
    if not paths:
        return 0, 0, None
    step = max(len(paths) / max(sample, 1), 1.0)
    chosen = sorted({int(i * step) for i in range(min(sample, len(paths)))})
    bad, example = 0, None
    for i in chosen:
        try:
            with open(paths[i], "rb") as f:
                data = f.read()
        except OSError:
            data = b""
        if not transforms.eval_image(data, 8, 1.0)[1]:
            bad += 1
            example = example or paths[i]
    return len(chosen), bad, example


def check_readable(scan: SplitScan, sample: int = PROBE_FILES) -> tuple[int, int]:
    """:func:`probe_readable` on a scan; raises ValueError when none of the probed files decodes.

    Returns (files decoded, unreadable among them).
    """
    checked, bad, example = probe_readable(scan.paths, sample)
    if checked and bad == checked:
        every = "all" if checked == len(scan.paths) else f"all {checked} probed of the"
        raise ValueError(
            f"{every} {len(scan.paths)} image files of {scan.split_dir!r} are unreadable "
            f"(e.g. {example!r} does not decode as an image); replace them with JPEG / PNG / "
            "WebP images, or point data_dir at another folder"
        )
    return checked, bad


def steps_per_epoch(data_dir: str | os.PathLike, global_batch_size: int, *,
                    allow_empty_classes: bool = False, scan: SplitScan | None = None) -> int:
    """Full train batches per epoch (the train loader drops the last partial batch).
    ``scan``: the :func:`scan_split` of the train split, when the caller has it (no rescan)."""
    _check_positive("global_batch_size", global_batch_size)
    if scan is None:
        scan = scan_split(data_dir, "train", allow_empty_classes=allow_empty_classes)
    n = len(scan.paths)
    return max(n // global_batch_size, 1)


_WORKER_GUARDED = False
# How often a worker process checks that the training process is still alive (seconds).
PARENT_POLL_S = 0.5


def guard_worker_process(owner_pid: int) -> None:
    """Make this grain worker process die with the training process ``owner_pid``.

    Called once per worker, on its first record: ignores SIGINT (Ctrl-C in a terminal reaches the
    whole process group; the training process alone decides how to stop and then shuts the
    workers down) and starts a daemon thread that ends the worker as soon as its parent is gone
    (``kill -9`` of the training process), so no worker or shared memory outlives the run.
    ``PR_SET_PDEATHSIG`` is not used: it fires when the parent *thread* exits, and grain starts
    workers from short-lived threads.
    """
    global _WORKER_GUARDED
    if _WORKER_GUARDED:
        return
    _WORKER_GUARDED = True
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread of the worker: the watchdog still works
        pass

    # The parent is normally ``owner_pid`` (grain spawns workers directly); any other start
    # method works too: the worker exits when its parent changes (it was re-parented).
    parent = os.getppid()
    if parent == 1 and owner_pid != 1:  # already orphaned before the first record
        os._exit(0)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(PARENT_POLL_S)

    threading.Thread(target=watch, name="convfirst-parent-watchdog", daemon=True).start()


class ImageFolderSource(grain.sources.RandomAccessDataSource):
    """grain data source: record i -> {"data": file bytes, "label": int, "pad": bool}.

    ``length`` may exceed the number of files: the extra records are padding (empty bytes,
    ``pad=True``), used by the eval loader to fill the last batch. A file that cannot be read
    gives empty bytes, which the transforms turn into a zero image with valid = 0.
    """

    def __init__(self, data_dir: str | os.PathLike, split: str, length: int | None = None, *,
                 allow_empty_classes: bool = False, scan: SplitScan | None = None):
        self._data_dir = str(pathlib.Path(data_dir).expanduser())
        self._split = split
        if scan is None:
            scan = scan_split(self._data_dir, split, allow_empty_classes=allow_empty_classes)
        self._paths, self._labels = list(scan.paths), list(scan.labels)
        self._owner_pid = os.getpid()  # the training process; grain workers are its children
        self._length = len(self._paths) if length is None else int(length)
        if self._length < len(self._paths):
            raise ValueError(f"length {length} is smaller than the {len(self._paths)} files")

    @property
    def num_files(self) -> int:
        return len(self._paths)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict:
        if os.getpid() != self._owner_pid:
            guard_worker_process(self._owner_pid)
        index = int(index)
        if index >= len(self._paths):
            return {"data": b"", "label": 0, "pad": True}
        try:
            with open(self._paths[index], "rb") as f:
                data = f.read()
        except OSError:
            data = b""
        return {"data": data, "label": self._labels[index], "pad": False}

    def __repr__(self) -> str:  # stable across processes: grain validates checkpoints with it
        return (
            f"ImageFolderSource(data_dir={self._data_dir!r}, split={self._split!r}, "
            f"files={len(self._paths)}, length={self._length})"
        )


@dataclasses.dataclass(frozen=True)
class TrainTransform(grain.transforms.RandomMap):
    """Random-resized-crop + flip + normalise; per-record rng from the grain sampler."""

    image_size: int
    scale: tuple[float, float] = transforms.DEFAULT_SCALE
    ratio: tuple[float, float] = transforms.DEFAULT_RATIO

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        img, ok = transforms.train_image(
            element["data"], self.image_size, rng, self.scale, self.ratio
        )
        image = transforms.normalize(img) if ok else np.zeros(img.shape, np.float32)
        return {
            "image": image,
            "label": np.int32(element["label"]),
            "valid": np.float32(ok),
        }


@dataclasses.dataclass(frozen=True)
class EvalTransform(grain.transforms.Map):
    """Resize + centre crop; stays uint8 (normalised after batching, 4x less IPC)."""

    image_size: int
    crop_pct: float = transforms.DEFAULT_CROP_PCT

    def map(self, element: dict) -> dict:
        if element["pad"]:
            img = np.zeros((self.image_size, self.image_size, 3), np.uint8)
            ok = False
        else:
            img, ok = transforms.eval_image(element["data"], self.image_size, self.crop_pct)
        return {"image": img, "label": np.int32(element["label"]), "valid": np.float32(ok)}


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_shard(shard_index: int, shard_count: int) -> None:
    _check_positive("shard_count", shard_count)
    if not 0 <= shard_index < shard_count:
        raise ValueError(
            f"shard_index must be in [0, shard_count={shard_count}), got {shard_index}; "
            "use jax.process_index() / jax.process_count()"
        )


def _prepare_workers(num_workers: int) -> None:
    """Checks that grain can start ``num_workers`` worker processes; fixes grain's absl-flag bug.

    grain starts workers with the "spawn" method, which re-runs ``__main__`` from its file; a
    program read from stdin (``python - <<EOF``) has no file, the workers die at start-up and
    grain waits forever -- refuse that case with a clear error instead. grain <= 0.2.x also reads
    an absl flag when it starts workers and raises UnparsedFlagAccessError in programs that do
    not use absl.app (google/grain#1355): mark the flags parsed (keeping their defaults).
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 (0 = in-process), got {num_workers}")
    if num_workers == 0:
        return
    import __main__

    main_file = getattr(__main__, "__file__", None)
    if main_file is not None and not os.path.exists(main_file):
        raise ValueError(
            f"num_workers={num_workers} needs worker processes, which re-import the main program, "
            f"but it was not read from a file ({main_file!r}); run a script or `python -m ...`, "
            "or pass num_workers=0"
        )
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _read_options() -> grain.ReadOptions:
    # The source only reads file bytes (local disk: fast); decoding runs in the operations, in
    # the worker processes. grain's read-ahead threads cost more CPU than they save here (its
    # prefetch bookkeeping polls every buffered future per element): measured 1.06 ms/image
    # without them vs 1.47 ms/image with 4 threads x 256 buffered (Imagenette, 64 px).
    return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def build_train_loader(
    data_dir: str | os.PathLike,
    *,
    image_size: int,
    global_batch_size: int,
    seed: int = 0,
    num_workers: int = 2,
    shard_index: int = 0,
    shard_count: int = 1,
    scale: tuple[float, float] = transforms.DEFAULT_SCALE,
    ratio: tuple[float, float] = transforms.DEFAULT_RATIO,
    allow_empty_classes: bool = False,
    scan: SplitScan | None = None,
) -> grain.DataLoader:
    """Infinite, epoch-shuffled train loader (grain.DataLoader).

    Each host (``shard_index`` of ``shard_count``, normally ``jax.process_index()`` /
    ``jax.process_count()``) gets batches of ``global_batch_size // shard_count`` examples from
    its own interleaved slice of every epoch's permutation; the last partial batch of an epoch
    is dropped. Same ``(seed, num_workers, shard_count)`` -> the same batches: grain gives each
    record a Philox generator keyed on seed + position, and with worker processes each worker
    batches its own round-robin slice of records, so batch composition depends on the worker
    count. ``iter(loader)`` returns a grain iterator with ``get_state()`` / ``set_state()`` for
    exact resume (grain refuses a state saved with a different worker count).
    ``num_workers > 0`` starts "spawn" worker processes (each imports numpy, PIL, grain and jax:
    a few seconds of start-up); it needs a main program that lives in a file. The workers
    ignore Ctrl-C and exit when the training process dies (:func:`guard_worker_process`).
    ``allow_empty_classes``: see :func:`scan_split`; ``scan``: the train split's
    :func:`scan_split`, when the caller has it (the folder is not walked again).
    """
    _check_positive("image_size", image_size)
    _check_positive("global_batch_size", global_batch_size)
    _check_shard(shard_index, shard_count)
    if global_batch_size % shard_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be divisible by "
            f"shard_count={shard_count} (each host loads an equal share)"
        )
    if not 0 <= seed < 2**31:
        raise ValueError(f"seed must be in [0, 2**31), got {seed}")
    _prepare_workers(num_workers)
    source = ImageFolderSource(data_dir, "train", allow_empty_classes=allow_empty_classes,
                               scan=scan)
    local_batch = global_batch_size // shard_count
    if len(source) // shard_count < local_batch:
        raise ValueError(
            f"{str(pathlib.Path(data_dir) / 'train')!r} has {len(source)} images, fewer than "
            f"one batch per host ({local_batch}); lower the batch size"
        )
    shard = grain.sharding.ShardOptions(
        shard_index=shard_index, shard_count=shard_count, drop_remainder=True
    )
    sampler = grain.samplers.IndexSampler(
        num_records=len(source), shuffle=True, seed=int(seed), num_epochs=None, shard_options=shard
    )
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=[
            TrainTransform(image_size, tuple(scale), tuple(ratio)),
            grain.transforms.Batch(batch_size=local_batch, drop_remainder=True),
        ],
        worker_count=num_workers,
        worker_buffer_size=2,
        shard_options=shard,
        read_options=_read_options(),
    )


class EvalLoader:
    """One pass over the val split per ``iter()``, in file order, in fixed-size batches.

    The split is padded to a multiple of ``batch_size * shard_count`` with zero images
    (``valid = 0``), so every host sees the same number of full batches. Attributes:
    ``num_examples`` (real images, all hosts), ``num_batches`` (per host, = ``len(loader)``).
    Unreadable files are also ``valid = 0``: their count is
    ``num_examples_local - sum(valid)`` after a pass (``num_examples_local`` is this host's
    real image count).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        image_size: int,
        batch_size: int,
        num_workers: int,
        shard_index: int,
        shard_count: int,
        crop_pct: float,
        scan: SplitScan | None = None,
    ):
        scan = scan_split(data_dir, "val") if scan is None else scan
        files = len(scan.paths)
        per_pass = batch_size * shard_count
        padded = math.ceil(files / per_pass) * per_pass
        self.source = ImageFolderSource(data_dir, "val", length=padded, scan=scan)
        self.batch_size = batch_size
        self.num_examples = files
        self.num_batches = padded // per_pass
        # Host s gets records s, s + S, s + 2S, ... (grain's interleaved sharding).
        self.num_examples_local = len(range(shard_index, files, shard_count))
        shard = grain.sharding.ShardOptions(
            shard_index=shard_index, shard_count=shard_count, drop_remainder=False
        )
        # Elements (not batches) cross the process boundary so that batches are formed in file
        # order here, whatever the worker count.
        self._loader = grain.DataLoader(
            data_source=self.source,
            sampler=grain.samplers.IndexSampler(
                num_records=padded, shuffle=False, num_epochs=1, shard_options=shard
            ),
            operations=[EvalTransform(image_size, crop_pct)],
            worker_count=num_workers,
            worker_buffer_size=max(batch_size, 16),
            shard_options=shard,
            read_options=_read_options(),
        )

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict]:
        it = iter(self._loader)
        for _ in range(self.num_batches):
            items = [next(it) for _ in range(self.batch_size)]
            valid = np.array([x["valid"] for x in items], np.float32)
            images = transforms.normalize(np.stack([x["image"] for x in items]))
            images *= valid[:, None, None, None]  # invalid / padding -> exact zeros
            yield {
                "image": images,
                "label": np.array([x["label"] for x in items], np.int32),
                "valid": valid,
            }


def build_eval_loader(
    data_dir: str | os.PathLike,
    *,
    image_size: int,
    batch_size: int,
    num_workers: int = 2,
    shard_index: int = 0,
    shard_count: int = 1,
    crop_pct: float = transforms.DEFAULT_CROP_PCT,
    scan: SplitScan | None = None,
) -> EvalLoader:
    """Eval loader over ``data_dir/val``: every image exactly once per ``iter()``.

    Transform: resize short side to ``image_size / crop_pct``, centre crop ``image_size``.
    The last partial batch is padded to ``batch_size`` with zero images and ``valid = 0``.
    ``scan``: the val split's :func:`scan_split`, when the caller has it (no rescan).
    """
    _check_positive("image_size", image_size)
    _check_positive("batch_size", batch_size)
    _check_shard(shard_index, shard_count)
    _prepare_workers(num_workers)
    return EvalLoader(
        data_dir,
        image_size=image_size,
        batch_size=batch_size,
        num_workers=num_workers,
        shard_index=shard_index,
        shard_count=shard_count,
        crop_pct=crop_pct,
        scan=scan,
    )


def _benchmark(args: argparse.Namespace) -> None:
    data_dir = args.data_dir or ensure_synthetic_dataset()
    t0 = time.perf_counter()
    if args.split == "train":
        loader = build_train_loader(
            data_dir,
            image_size=args.image_size,
            global_batch_size=args.batch_size,
            num_workers=args.num_workers,
            seed=0,
        )
        it = iter(loader)
    else:
        it = iter(
            build_eval_loader(
                data_dir,
                image_size=args.image_size,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
            )
        )
    batch = next(it)  # includes worker start-up
    t1, c1 = time.perf_counter(), time.process_time()
    n = invalid = 0
    for _ in range(args.batches):
        try:
            batch = next(it)
        except StopIteration:
            break
        n += len(batch["label"])
        invalid += int((batch["valid"] == 0).sum())
    t2, c2 = time.perf_counter(), time.process_time()
    del it  # grain closes its worker processes and shared memory when the iterator is freed
    rate = n / max(t2 - t1, 1e-9)
    print(
        f"data_dir={data_dir} split={args.split} image_size={args.image_size} "
        f"batch_size={args.batch_size} num_workers={args.num_workers}\n"
        f"first batch (incl. start-up): {t1 - t0:.2f} s; then {n} images in {t2 - t1:.2f} s: "
        f"{rate:.0f} images/s ({rate / args.batch_size:.1f} batches/s); "
        f"valid=0 examples: {invalid}; image {batch['image'].shape} {batch['image'].dtype}\n"
        f"CPU time of this process: {1e3 * (c2 - c1) / max(n, 1):.2f} ms/image"
        + (" (all decoding is in this process)" if args.num_workers == 0 else " (excl. workers)")
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure data-loader throughput (images/s).")
    parser.add_argument("--data-dir", default=None, help="ImageNet-layout folder (default: synthetic)")
    parser.add_argument("--split", choices=("train", "val"), default="train")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=50)
    args = parser.parse_args(argv)
    try:
        _benchmark(args)
    except ValueError as e:  # one line, naming this tool's flag
        import sys  # noqa: PLC0415

        print(f"error: {e} (data_dir is --data-dir DIR here)", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    # Run the copy imported as `train.data`, so grain's spawned workers unpickle the transforms
    # by their importable name rather than from `__main__`.
    from train.data import main as _main

    _main()
