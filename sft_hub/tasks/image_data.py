"""The image task's data: sources (class folders, sklearn's digits, Hub datasets), checks, and batching.

Every source yields splits with an `image` column (`datasets.Image(decode=False)`: a path, or bytes
plus a display name) and a `raw_label` column. `check_images` decodes every image once up front so that
an unreadable or truncated file is an error naming the file (or, on request, skipped and counted, never
silently). Training decodes on the fly: `DecodeTransform` (grayscale, palette, 16-bit and alpha images
become RGB; timm's transform yields uint8) and `Collator` (normalises a whole batch at once, as timm's
prefetcher does; random erasing and mixup/cutmix with soft labels on training batches).
"""

from __future__ import annotations

import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict, Features, Image as ImageFeature, List, Value
from PIL import Image, ImageOps

from sft_hub.errors import DataError
from sft_hub.tasks.seeding import ROW, SampleSeeds

log = logging.getLogger("sft_hub")
IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
SPLIT_NAMES = ("train", "validation", "valid", "val", "dev", "test")
DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED = 0.2, 0  # fixed: the held-out digits never depend on the training seed
FEATURES = Features({"image": ImageFeature(decode=False), "raw_label": Value("string")})


def image_name(item: dict) -> str:
    return item.get("path") or "<image bytes>"


def open_rgb(item: dict, draft: bool = False) -> Image.Image:
    """Decode one `{"path", "bytes"}` item fully into an RGB image (alpha composited onto white)."""
    img = Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"])
    if draft and img.format == "JPEG":  # decode at 1/8 scale: still reads every byte (truncation is caught)
        img.draft("RGB", (1, 1))
    img.load()
    if img.getexif().get(0x0112, 1) != 1:  # camera orientation tag: rotate the pixels as viewers show them
        img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / float grayscale: scale to 8 bits, not clip
        arr = np.asarray(img, dtype=np.float32)
        peak = float(arr.max()) if arr.size else 0.0
        img = Image.fromarray(np.clip(arr * (255.0 / peak) if peak > 255 else arr, 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
        canvas = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, img).convert("RGB")
    return img.convert("RGB")


class DecodeTransform:
    """`Dataset.with_transform` callable (picklable for DataLoader workers): image items -> uint8 CHW tensors.

    Rows of the training split carry `train_classes` (the number of classes), which tells the collator to augment.
    """

    def __init__(self, transform: Any, train_classes: int | None = None):
        self.transform, self.train_classes = transform, train_classes
        self.seeds = SampleSeeds()  # training rows: augmentation drawn per (seed, epoch, row); see seeding.py

    def set_epoch(self, epoch: int, seed: int) -> None:
        self.seeds.set_epoch(epoch, seed)

    def __call__(self, batch: dict) -> dict:
        pixels = []
        rows = batch.get(ROW)
        for i, item in enumerate(batch["image"]):
            try:
                img = open_rgb(item)
            except Exception as exc:
                raise DataError(f"image {image_name(item)}: cannot read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
            if rows is None:
                pixels.append(self.transform(img))
            else:
                with self.seeds.seeded(int(rows[i])):
                    pixels.append(self.transform(img))
        out: dict[str, list] = {"pixel_values": pixels}
        if rows is not None:
            out[ROW] = rows
        if "labels" in batch:
            out["labels"] = batch["labels"]
            if self.train_classes is not None:
                out["train_classes"] = [self.train_classes] * len(pixels)
        return out


class Collator:
    """uint8 images -> a normalised float batch (+ `labels`); training batches get random erasing and mixup/cutmix."""

    def __init__(self, mean: tuple, std: tuple, channels_last: bool, re_prob: float = 0.0, mixup: dict | None = None):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.channels_last = channels_last
        self.eraser = None
        if re_prob > 0:
            from timm.data.random_erasing import RandomErasing

            self.eraser = RandomErasing(re_prob, mode="pixel", device="cpu")
        self.mixer = None
        if mixup:
            from timm.data import Mixup

            self.mixer = Mixup(**mixup)
        self.seeds = SampleSeeds()  # erasing and mixup draws per (seed, epoch, batch rows); see seeding.py

    def set_epoch(self, epoch: int, seed: int) -> None:
        self.seeds.set_epoch(epoch, seed)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if self.channels_last:  # stacked as NHWC (timm's uint8 CHW tensors are HWC views): no transposing copy
            pixels = torch.stack([f["pixel_values"].permute(1, 2, 0) for f in features]).permute(0, 3, 1, 2)
        else:
            pixels = torch.stack([f["pixel_values"] for f in features])
        pixels = pixels.float().sub_(self.mean).div_(self.std)  # elementwise: the same values in either layout
        batch: dict[str, torch.Tensor] = {}
        train = features[0].get("train_classes") is not None
        key = tuple(int(f[ROW]) for f in features) if ROW in features[0] else ("unkeyed",)
        if self.eraser is not None and train:
            with self.seeds.seeded("erase", *key):
                pixels = self.eraser(pixels)
        if features[0].get("labels") is not None:
            values = [f["labels"] for f in features]  # class ids, or multi-hot rows for multi-label data
            labels = torch.tensor(values, dtype=torch.float32 if isinstance(values[0], (list, np.ndarray)) else torch.long)
            if self.mixer is not None and train:
                with self.seeds.seeded("mix", *key):
                    pixels, labels = self._mix(pixels, labels, features[0]["train_classes"])
            batch["labels"] = labels
        batch["pixel_values"] = pixels.contiguous(memory_format=torch.channels_last) if self.channels_last else pixels
        return batch

    def _mix(self, pixels: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft labels [batch, classes] (timm's Mixup needs an even batch: an odd last row stays unmixed)."""
        from timm.data.mixup import mixup_target

        self.mixer.num_classes = num_classes
        soft = mixup_target(labels, num_classes, 1.0, self.mixer.label_smoothing)
        even = len(pixels) - len(pixels) % 2
        if even >= 2:
            pixels[:even], soft[:even] = self.mixer(pixels[:even], labels[:even])
        return pixels, soft


def _problem(item: dict) -> str | None:
    try:
        open_rgb(item, draft=True)
        return None
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def check_images(splits: DatasetDict, on_bad_image: str) -> tuple[DatasetDict, dict]:
    """Decode every image once; bad ones raise DataError (or are dropped and listed when `on_bad_image=skip`)."""
    out, skipped = {}, []
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        for name, ds in splits.items():
            bad = []
            for start in range(0, len(ds), 512):
                items = ds[start: start + 512]["image"]
                bad += [(start + i, image_name(it), why) for i, (it, why) in enumerate(zip(items, pool.map(_problem, items))) if why]
            if bad and on_bad_image == "error":
                i, path, why = bad[0]
                more = f" ({len(bad) - 1} more bad images; data.on_bad_image=skip drops and counts them)" if len(bad) > 1 else ""
                raise DataError(f"image {path} (split {name!r}, row {i}): cannot read: {why}{more}")
            for i, path, why in bad:
                log.warning("skipping unreadable image %s (split %r): %s", path, name, why)
            skipped += [{"split": name, "image": path, "reason": why} for _, path, why in bad]
            drop = {i for i, _, _ in bad}
            out[name] = ds.select([i for i in range(len(ds)) if i not in drop]) if drop else ds
    info = {"skipped_images": len(skipped)}
    if skipped:
        info["skipped"] = skipped[:50]  # the manifest lists the first 50; the count is exact
    return DatasetDict(out), info


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in ("Thumbs.db", "desktop.ini", "__MACOSX")


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _class_folders(root: Path, where: str) -> dict[str, list[str]]:
    """class name -> image files under `root/<class>/` (recursively); loose images and non-images are errors."""
    classes: dict[str, list[str]] = {}
    for entry in sorted(p for p in root.iterdir() if _visible(p)):
        if entry.is_file():
            if _is_image_file(entry):
                raise DataError(f"{where}: image {entry} is not inside a class folder ({root}/<class>/{entry.name})")
            continue  # README, label lists and other notes next to the class folders
        files = []
        for f in sorted(entry.rglob("*")):
            if f.is_dir() or not all(_visible(Path(part)) for part in f.relative_to(entry).parts):
                continue
            if not _is_image_file(f):
                raise DataError(f"{where}: {f} is not an image file (known image extensions: .jpg, .jpeg, .png, .bmp, .gif, .webp, .tif, ...)")
            files.append(str(f))
        if not files:
            raise DataError(f"{where}: class folder {entry} is empty (no images)")
        classes[entry.name] = files
    if not classes:
        raise DataError(f"{where}: no class folders in {root} (expected {root}/<class>/<image files>)")
    return classes


def _rows(classes: dict[str, list[str]]) -> Dataset:
    paths = [f for files in classes.values() for f in files]
    labels = [c for c, files in classes.items() for _ in files]
    return Dataset.from_dict({"image": [{"path": p, "bytes": None} for p in paths], "raw_label": labels}, features=FEATURES)


def load_folder(folder: str, train_split: str) -> DatasetDict:
    """`<folder>/<split>/<class>/*` (splits: train, val, ...) or `<folder>/<class>/*` (one pool: `train`)."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"data.folder: folder {folder} not found")
    subdirs = {p.name for p in root.iterdir() if p.is_dir() and _visible(p)}
    if train_split not in subdirs:
        return DatasetDict({train_split: _rows(_class_folders(root, "data.folder"))})
    split_dirs = [s for s in subdirs if s == train_split or s in SPLIT_NAMES]
    found = {s: _class_folders(root / s, f"data.folder (split {s})") for s in sorted(split_dirs)}
    train_classes = set(found[train_split])
    for split, classes in found.items():
        extra = sorted(set(classes) - train_classes)
        if extra:
            raise DataError(f"data.folder: class {extra[0]!r} has images in {root / split / extra[0]} but no folder in "
                            f"{root / train_split} (training classes: {', '.join(sorted(train_classes))})")
    return DatasetDict({s: _rows(c) for s, c in found.items()})


DIGIT_ATTRIBUTES = {"even": {0, 2, 4, 6, 8}, "prime": {2, 3, 5, 7}, "loop": {0, 6, 8, 9}, "large": {5, 6, 7, 8, 9}}


def digit_attributes(digit: int) -> list[str]:
    """The multi-label targets of `builtin: digits_attributes` (a 1 has none of them)."""
    return [name for name, digits in DIGIT_ATTRIBUTES.items() if digit in digits]


def load_digits_splits(attributes: bool = False) -> DatasetDict:
    """scikit-learn's 1,797 8x8 digits as grayscale PNGs; a fixed stratified 80/20 train/test split.

    With `attributes`, each image's label is the list of its digit's attributes (multi-label), same split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # pixel values are 0..16
    items = []
    for i, arr in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(arr, mode="L").save(buf, format="PNG")
        items.append({"path": f"digits/{i}.png", "bytes": buf.getvalue()})
    labels = [digit_attributes(int(t)) if attributes else str(int(t)) for t in digits.target]
    features = Features({**FEATURES, "raw_label": List(Value("string"))}) if attributes else FEATURES
    train_idx, test_idx = train_test_split(np.arange(len(items)), test_size=DIGITS_TEST_FRACTION,
                                           random_state=DIGITS_SPLIT_SEED, stratify=digits.target)
    make = lambda idx: Dataset.from_dict({"image": [items[i] for i in idx], "raw_label": [labels[i] for i in idx]}, features=features)
    return DatasetDict({"train": make(sorted(train_idx)), "test": make(sorted(test_idx))})


def load_hub(dataset: str, config: str | None, revision: str | None, image_column: str, label_column: str) -> DatasetDict:
    from datasets import load_dataset

    try:
        raw = load_dataset(dataset, config, revision=revision)
    except Exception as exc:
        raise DataError(f"data.dataset: cannot load {dataset!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    out = {}
    for split, ds in raw.items():
        for col, key in ((image_column, "image_column"), (label_column, "label_column")):
            if col not in ds.column_names:
                raise DataError(f"data.{key}: column {col!r} not in dataset {dataset} split '{split}'; columns are {', '.join(ds.column_names)}")
        ds = ds.select_columns([image_column, label_column]).rename_columns({image_column: "image", label_column: "raw_label"})
        out[split] = ds.cast_column("image", ImageFeature(decode=False))  # decoded on the fly by open_rgb
    return DatasetDict(out)


def stratified_holdout(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split off a seeded, class-stratified fraction (classes too small to stratify fall back to a plain split)."""
    from sklearn.model_selection import train_test_split

    labels = [str(v) for v in ds["raw_label"]]
    idx = np.arange(len(ds))
    counts = {v: labels.count(v) for v in set(labels)}
    stratify = labels if min(counts.values()) >= 2 and int(round(fraction * len(ds))) >= len(counts) else None
    try:
        keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError as exc:
        raise DataError(f"data.validation_fraction: cannot split {len(ds)} images by {fraction}: {exc}") from None
    return ds.select(sorted(keep)), ds.select(sorted(held))


def list_inputs(values: list[str], file: Path | None) -> Dataset:
    """Images to predict: paths or folders on the command line, or a text file with one path per line."""
    names = list(values)
    base = Path.cwd()
    if file is not None:
        if not file.is_file():
            raise DataError(f"--file {file}: not found")
        names += [line.strip() for line in file.read_text().splitlines() if line.strip() and not line.startswith("#")]
        base = file.parent
    paths = []
    for name in names:
        p = Path(name)
        if not p.exists() and not p.is_absolute() and (base / p).exists():
            p = base / p
        if p.is_dir():
            paths += [str(f) for f in sorted(p.rglob("*")) if f.is_file() and _is_image_file(f) and _visible(f)]
        elif p.is_file():
            paths.append(str(p))
        else:
            raise DataError(f"input {name}: image file not found")
    rows = Dataset.from_dict({"image": [{"path": p, "bytes": None} for p in paths]},
                             features=Features({"image": ImageFeature(decode=False)}))
    for item in rows["image"]:
        why = _problem(item)
        if why:
            raise DataError(f"image {item['path']}: cannot read: {why}")
    return rows
