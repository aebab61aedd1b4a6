"""Image data: decoding (every PIL mode to RGB), folder/digits sources, bad-file checks, transforms, collator.

Offline: images generated in tmp_path (PNG and JPEG in RGB, L, P, RGBA; corrupt and truncated files).
The fixture helpers (`make_folder`, `model_cfg`, `data_cfg`) are in image_fixtures.py, shared by the image tests.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sft_hub.errors import ConfigError, DataError
from sft_hub.tasks import image, image_data

from image_fixtures import CLASSES, MODES, data_cfg, make_folder, model_cfg, write_image

ROOT = Path(__file__).resolve().parents[1]


# --- decoding and checks ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode,fmt", [(m, "PNG") for m in ("RGB", "L", "P", "RGBA", "LA", "I;16")] + [("RGB", "JPEG"), ("L", "JPEG")])
def test_every_mode_decodes_to_rgb(tmp_path, mode, fmt):
    img = Image.fromarray(np.full((6, 5), 40000 if mode == "I;16" else 120, dtype=np.uint16 if mode == "I;16" else np.uint8))
    img = img if mode == "I;16" else img.convert(mode)
    path = tmp_path / f"x.{fmt.lower()}"
    img.save(path, format=fmt)
    out = image_data.open_rgb({"path": str(path), "bytes": None})
    assert out.mode == "RGB" and out.size == (5, 6)
    if mode == "I;16":
        assert np.asarray(out).max() == 255  # scaled to 8 bits, not clipped to white from 255 up


def test_transparent_pixels_become_white(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[0, 0] = (10, 20, 30, 255)
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(image_data.open_rgb({"path": str(tmp_path / "a.png"), "bytes": None}))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[1, 1]) == (255, 255, 255)


def test_folder_splits_labels_and_fixture_modes(tmp_path):
    folder = make_folder(tmp_path / "data")
    (folder / "README.txt").write_text("notes next to the split folders are fine")
    data = image.load_data(data_cfg(folder=str(folder)), seed=0)
    assert data.labels == list(CLASSES) and data.train_split == "train" and data.eval_splits == ["val"]
    assert len(data.splits["train"]) == 24 and len(data.splits["val"]) == 12
    assert data.info["skipped_images"] == 0
    modes = {Image.open(p).mode for p in (folder / "train").rglob("*.*")}
    assert modes == set(MODES)


def test_single_folder_is_split_by_seeded_stratified_fraction(tmp_path):
    make_folder(tmp_path / "d", {"train": 10}, splits=("train",))
    flat = tmp_path / "d" / "train"  # <folder>/<class>/*: no split folders
    cfg = data_cfg(folder=str(flat), validation_fraction=0.3)
    a, b = image.load_data(cfg, seed=1), image.load_data(cfg, seed=1)
    assert a.eval_splits == ["validation"] and len(a.splits["validation"]) == 9
    assert sorted(a.splits["validation"]["labels"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # stratified
    assert a.splits["validation"]["image"] == b.splits["validation"]["image"]  # seeded


@pytest.mark.parametrize("damage", ["garbage", "truncated_jpeg", "truncated_png"])
def test_unreadable_image_is_an_error_naming_the_file(tmp_path, damage):
    folder = make_folder(tmp_path / "data")
    bad = folder / "train" / "bees" / ("bad.png" if damage == "truncated_png" else "bad.jpg")
    if damage == "garbage":
        bad.write_bytes(b"this is not a jpeg")
    else:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG" if bad.suffix == ".jpg" else "PNG")
        bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    with pytest.raises(DataError, match=r"image .*bad\.(jpg|png).*cannot read"):
        image.load_data(data_cfg(folder=str(folder)), seed=0)


def test_skip_option_drops_and_counts_bad_images(tmp_path):
    folder = make_folder(tmp_path / "data")
    (folder / "train" / "ants" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "val" / "ants" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    data = image.load_data(data_cfg(folder=str(folder), on_bad_image="skip"), seed=0)
    assert data.info["skipped_images"] == 2 and len(data.splits["train"]) == 24 and len(data.splits["val"]) == 12
    assert {Path(s["image"]).name for s in data.info["skipped"]} == {"broken.jpg", "broken.png"}


def test_bad_image_without_verification_still_names_the_file(tmp_path):
    folder = make_folder(tmp_path / "data")
    (folder / "train" / "ants" / "zz.jpg").write_bytes(b"nope")
    cfg = data_cfg(folder=str(folder), verify_images=False)
    data = image.load_data(cfg, seed=0)
    enc = image.encode(data.splits, image.load_processor(model_cfg()), cfg, model_cfg(), "train")
    index = [i for i, it in enumerate(data.splits["train"]["image"]) if it["path"].endswith("zz.jpg")][0]
    with pytest.raises(DataError, match="zz.jpg"):
        enc["train"][index]
    with pytest.raises(ConfigError, match="on_bad_image"):
        data_cfg(folder=str(folder), verify_images=False, on_bad_image="skip")


@pytest.mark.parametrize("problem,match", [
    ("empty_class", r"class folder .*train/wasps is empty"),
    ("val_only_class", r"class 'moths' has images in .*val/moths but no folder in"),
    ("non_image", r"notes.txt is not an image file"),
    ("loose_image", r"stray.png is not inside a class folder"),
])
def test_folder_layout_errors(tmp_path, problem, match):
    folder = make_folder(tmp_path / "data")
    if problem == "empty_class":
        for f in (folder / "train" / "wasps").iterdir():
            f.unlink()
    elif problem == "val_only_class":
        write_image(folder / "val" / "moths" / "m.png", "RGB", (20, 20), 90)
    elif problem == "non_image":
        (folder / "train" / "bees" / "notes.txt").write_text("x")
    else:
        write_image(folder / "train" / "stray.png", "RGB", (20, 20), 90)
    with pytest.raises(DataError, match=match):
        image.load_data(data_cfg(folder=str(folder)), seed=0)


def test_digits_builtin_fixed_stratified_holdout():
    data = image.load_data(data_cfg(builtin="digits"), seed=123)
    assert data.labels == [str(d) for d in range(10)] and data.eval_splits == ["test"]
    assert (len(data.splits["train"]), len(data.splits["test"])) == (1437, 360)
    counts = np.bincount(data.splits["test"]["labels"], minlength=10)
    assert counts.min() >= 35  # every digit ~36 times
    again = image.load_data(data_cfg(builtin="digits"), seed=7)  # the held-out split ignores the training seed
    assert again.splits["test"]["image"][:5] == data.splits["test"]["image"][:5]
    first = image_data.open_rgb(data.splits["train"][0]["image"])
    assert first.size == (8, 8) and first.mode == "RGB"


# --- transforms, collator ---------------------------------------------------------------------------

def test_transforms_collator_and_processor_round_trip(tmp_path):
    folder = make_folder(tmp_path / "data")
    cfg, mcfg = data_cfg(folder=str(folder), auto_augment="rand-m9-mstd0.5"), model_cfg(channels_last=True)
    data = image.load_data(cfg, seed=0)
    proc = image.load_processor(mcfg)
    assert proc.data_config["input_size"] == (3, 32, 32) and proc.channels_last
    image.save_processor(proc, tmp_path / "processor")
    assert image.load_processor(mcfg, saved=tmp_path / "processor") == proc
    enc = image.encode(data.splits, proc, cfg, mcfg, "train")
    assert enc["train"][0]["pixel_values"].shape == (3, 32, 32)
    assert torch.equal(enc["val"][3]["pixel_values"], enc["val"][3]["pixel_values"])  # eval: deterministic
    batch = image.collator(proc, cfg)([enc["val"][i] for i in range(5)])
    assert set(batch) == {"pixel_values", "labels"} and batch["labels"].dtype == torch.long
    assert batch["pixel_values"].is_contiguous(memory_format=torch.channels_last)
    rows = image.read_inputs(cfg, [str(folder / "val" / "bees")], None)  # a folder expands to its images
    pred = image.encode(image_data.DatasetDict({"rows": rows}), proc, cfg, mcfg, None)["rows"]
    assert set(image.collator(proc, cfg)([pred[0], pred[1]])) == {"pixel_values"}
    assert image.describe_input(rows[0]).endswith(".png") or image.describe_input(rows[0]).endswith(".jpg")
    with pytest.raises(DataError, match="missing.png"):
        image.read_inputs(cfg, [str(tmp_path / "missing.png")], None)


def test_mixup_cutmix_soft_labels_on_train_batches_only(tmp_path):
    folder = make_folder(tmp_path / "data")
    cfg = data_cfg(folder=str(folder), mixup=0.4, cutmix=1.0, label_smoothing=0.1)
    data = image.load_data(cfg, seed=0)
    proc = image.load_processor(model_cfg())
    enc = image.encode(data.splits, proc, cfg, model_cfg(), "train")
    collate = image.collator(proc, cfg)
    train = collate([enc["train"][i] for i in range(7)])  # odd: the last row stays unmixed
    assert train["labels"].shape == (7, 3) and train["pixel_values"].dtype == torch.float32 and torch.allclose(train["labels"].sum(-1), torch.ones(7))
    assert set(train) == {"pixel_values", "labels"}
    assert collate([enc["val"][i] for i in range(4)])["labels"].shape == (4,)

HYMENOPTERA = ROOT / ".." / "shared" / "data" / "hymenoptera"


@pytest.mark.skipif(not (HYMENOPTERA / "train").is_dir(), reason="real photos not here: ../shared/data/hymenoptera is absent")
def test_real_photos_load_verify_and_transform():
    cfg = data_cfg(folder=str(HYMENOPTERA), eval_splits=["val"])
    data = image.load_data(cfg, seed=0)
    assert data.labels == ["ants", "bees"] and (len(data.splits["train"]), len(data.splits["val"])) == (245, 153)
    palette = [it for it in [*data.splits["train"]["image"], *data.splits["val"]["image"]] if Image.open(it["path"]).mode == "P"]
    assert palette and image_data.open_rgb(palette[0]).mode == "RGB"
    proc = image.load_processor(model_cfg(name_or_path="resnet18", image_size=None))
    enc = image.encode(data.splits, proc, cfg, model_cfg(), "train")
    batch = image.collator(proc, cfg)([enc["train"][i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 224, 224)
