"""Training controls: class weights, multi-label classification (text, image, audio) and the EMA of weights.

Offline: a 2-layer BERT and timm's test_resnet built from configs, an AST built from a config, data generated here.
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import NEGATIVE, POSITIVE, REPO, sentence, text_recipe, write_sentiment_csv
from safetensors.torch import load_file

from sft_hub import losses
from sft_hub.config import parse_recipe
from sft_hub.engine import train
from sft_hub.errors import ConfigError, DataError
from sft_hub.inference import evaluate, load_run
from sft_hub.metrics import choose_thresholds, multilabel_metrics


# ---- the loss: weighted sums over the labelled items of the whole accumulated batch ----

def _split_sum(loss_fn, logits, labels, parts):
    """The loss of a batch cut into micro-batches, each divided by the whole batch's item count (what Trainer does)."""
    count = labels.numel()
    return sum(loss_fn({"logits": lg}, lb, count) for lg, lb in zip(logits.chunk(parts), labels.chunk(parts)))


def test_class_weighted_loss_is_exact_under_accumulation():
    torch.manual_seed(0)
    logits, labels, w = torch.randn(12, 3), torch.randint(0, 3, (12,)), [0.5, 2.0, 1.0]
    loss = losses.make_loss("single_label", w)
    whole = loss({"logits": logits}, labels)
    expected = (torch.tensor(w)[labels] * F.cross_entropy(logits, labels, reduction="none")).sum() / 12
    torch.testing.assert_close(whole, expected)  # divided by the number of examples, not by the sum of weights
    torch.testing.assert_close(_split_sum(loss, logits, labels, 3), whole)
    unweighted = losses.make_loss("single_label")({"logits": logits}, labels)
    torch.testing.assert_close(unweighted, F.cross_entropy(logits, labels))


def test_multi_label_bce_is_exact_under_accumulation():
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 4), (torch.rand(8, 4) > 0.6).float()
    loss = losses.make_loss("multi_label")
    torch.testing.assert_close(loss({"logits": logits}, labels), F.binary_cross_entropy_with_logits(logits, labels))
    torch.testing.assert_close(_split_sum(loss, logits, labels, 4), loss({"logits": logits}, labels))
    pos = [1.0, 3.0, 0.5, 2.0]
    weighted = losses.make_loss("multi_label", pos)({"logits": logits}, labels)
    torch.testing.assert_close(weighted, F.binary_cross_entropy_with_logits(logits, labels, pos_weight=torch.tensor(pos)))


def test_balanced_weights_average_one_and_mappings_name_labels():
    train_labels = [0] * 30 + [1] * 6 + [2] * 4
    w = losses.class_weights("balanced", ["a", "b", "c"], train_labels, multi_label=False)
    assert w == pytest.approx([40 / 90, 40 / 18, 40 / 12])
    assert np.mean([w[y] for y in train_labels]) == pytest.approx(1.0)  # the loss keeps its scale
    assert losses.class_weights({"b": 3, "c": 0.5}, ["a", "b", "c"], train_labels, False) == [1.0, 3.0, 0.5]
    with pytest.raises(DataError, match=r"data.class_weights.z: no such label; labels are a, b, c"):
        losses.class_weights({"z": 2.0}, ["a", "b", "c"], train_labels, False)
    hot = np.array([[1, 0], [1, 1], [1, 0], [1, 0]])
    assert losses.class_weights("balanced", ["x", "y"], hot, multi_label=True) == [1.0, 3.0]  # negatives / positives


# ---- thresholds and multi-label metrics ----

def test_thresholds_and_metrics():
    probs = np.array([[0.9, 0.35], [0.8, 0.32], [0.2, 0.1], [0.6, 0.05]])
    labels = np.array([[1, 1], [1, 1], [0, 0], [0, 0]])
    per_label = choose_thresholds(probs, labels, "per_label")
    assert per_label[0] == pytest.approx(0.65) and 0.1 < per_label[1] <= 0.3  # each label's best F1, ties nearest 0.5
    assert (choose_thresholds(probs, labels, 0.4) == 0.4).all()
    m = multilabel_metrics(probs, labels, per_label)
    assert m["f1_micro"] == m["f1_macro"] == m["exact_match"] == m["mAP"] == 1.0
    half = multilabel_metrics(probs, labels, np.full(2, 0.5))
    assert half["f1_macro"] == pytest.approx((0.8 + 0.0) / 2) and half["mAP"] == 1.0  # mAP does not depend on thresholds


# ---- class weights end to end: the minority class is found more often ----

def _imbalanced_images(root: Path) -> Path:
    """56 'plain' noise images and 8 'spot' ones (a bright square somewhere) to train on; 12 + 12 to validate."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, counts in (("train", (56, 8)), ("val", (12, 12))):
        for name, count in zip(("plain", "spot"), counts):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(60, 120, (32, 32, 3)).astype(np.uint8)
                if name == "spot":
                    y, x = rng.integers(0, 22, 2)
                    pixels[y:y + 10, x:x + 10] = 230
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture()
def two_threads():
    """The tiny ResNet's 30 steps are sensitive to float summation order: pin the thread count the numbers
    were measured with (with one thread both runs land elsewhere and the weighted one finds 2 of 8)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_balanced_class_weights_raise_minority_recall(tmp_path, two_threads):
    folder = _imbalanced_images(tmp_path / "data")
    recall, manifest = {}, {}
    for weights in (None, "balanced"):
        out = train(parse_recipe({
            "task": "image_classification", "model": {"name_or_path": "test_resnet", "image_size": 32},
            "data": {"folder": str(folder), "no_aug": True, **({"class_weights": weights} if weights else {})},
            "strategy": {"name": "full"},
            "training": {"output_dir": str(tmp_path / f"run_{weights}"), "max_steps": 30, "per_device_train_batch_size": 8,
                         "learning_rate": 1e-2, "save_strategy": "no", "report_to": "none", "seed": 0, "disable_tqdm": True}}))
        preds = out["trainer"].predict(out["trainer"].eval_dataset)
        truth, guess = preds.label_ids, preds.predictions.argmax(-1)
        recall[weights] = [float((guess[truth == c] == c).mean()) for c in (0, 1)]  # plain, spot
        manifest[weights] = out["manifest"]
    assert manifest[None]["class_weights"] is None
    assert manifest["balanced"]["class_weights"] == {"plain": pytest.approx(64 / 112), "spot": pytest.approx(4.0)}
    assert recall["balanced"][1] >= recall[None][1] + 0.4, recall  # the minority class is found far more often
    assert recall["balanced"][0] >= 0.9, recall  # ... without giving up the majority class


def test_bad_control_settings_name_the_field(tiny_bert, sentiment_files, tmp_path):
    def parse(data=None, engine=None):
        raw = text_recipe(tiny_bert, sentiment_files, tmp_path / "run")
        raw["data"].update(data or {})
        if engine:
            raw["engine"] = engine
        return parse_recipe(raw)

    for data, match in (({"class_weights": "even"}, r"data.class_weights: 'balanced' or a mapping label -> weight, got 'even'"),
                        ({"class_weights": {"pos": -1}}, r"data.class_weights.pos: a finite weight >= 0"),
                        ({"threshold": 0.3}, r"data.threshold: only used with problem_type: multi_label_classification"),
                        ({"label_delimiter": "|"}, r"data.label_delimiter: .*multi_label_classification only"),
                        ({"problem_type": "multi_label_classification", "threshold": 1.5}, r"data.threshold: a probability in \(0, 1\)")):
        with pytest.raises(ConfigError, match=match):
            parse(data)
    with pytest.raises(ConfigError, match=r"engine.ema.decay: must be between 0 and 1"):
        parse(engine={"ema": {"decay": 1.5}})
    with pytest.raises(ConfigError, match=r"engine.ema.dekay: unknown key; did you mean 'decay'"):
        parse(engine={"ema": {"dekay": 0.9}})
    with pytest.raises(DataError, match=r"data.label_delimiter: split 'train' row 0 has the label string 'pos'"):
        train(parse({"problem_type": "multi_label_classification"}))
# ---- multi-label: text (delimited strings and list columns), image, audio ----

def _multi_label_csv(folder: Path, seed: int = 0) -> dict[str, str]:
    """Sentences with a positive word, a negative word, both or neither; labels 'positive|negative' style ('' = none)."""
    rng, files = random.Random(seed), {}
    for split, n in (("train", 64), ("validation", 24)):
        path = folder / f"{split}.csv"
        rows = []
        for i in range(n):
            pos, neg = i % 2 == 0, i % 3 == 0
            words = [rng.choice(["the", "movie", "was", "a", "plot", "film"]) for _ in range(4)]
            words += [rng.choice(POSITIVE)] * pos + [rng.choice(NEGATIVE)] * neg
            rng.shuffle(words)
            rows.append((" ".join(words), "|".join(["positive"] * pos + ["negative"] * neg)))
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows([("review", "tags"), *rows])
        files[split] = str(path)
    return files


def test_multi_label_text_thresholds_eval_and_predict(tiny_bert, tmp_path, capsys):
    from sft_hub.cli import main

    files = _multi_label_csv(tmp_path)
    raw = text_recipe(tiny_bert, files, tmp_path / "run", max_steps=6)
    raw["data"].update(label_column="tags", problem_type="multi_label_classification", label_delimiter="|", class_weights="balanced")
    out = train(parse_recipe(raw))
    run, manifest = tmp_path / "run", out["manifest"]
    assert manifest["problem_type"] == "multi_label_classification" and manifest["labels"] == ["negative", "positive"]
    assert manifest["class_weights"] == {"negative": pytest.approx(42 / 22), "positive": pytest.approx(1.0)}  # negatives / positives
    saved = json.loads((run / "thresholds.json").read_text())
    assert saved == manifest["thresholds"] and saved["mode"] == "per_label" and saved["split"] == "validation"
    assert set(saved["thresholds"]) == {"negative", "positive"} and all(0 < t < 1 for t in saved["thresholds"].values())
    trained = manifest["metrics"]["validation"]
    assert {"eval_validation_f1_micro", "eval_validation_f1_macro", "eval_validation_mAP"} <= set(trained)
    assert manifest["main_metric"] == {"name": "mAP", "value": trained["eval_validation_mAP"]}

    reloaded = evaluate(load_run(run))["validation"]  # the saved thresholds: the same numbers as at the end of training
    for key in ("f1_micro", "f1_macro", "mAP", "exact_match"):
        assert reloaded[key] == pytest.approx(trained[f"eval_validation_{key}"], abs=1e-9), key

    capsys.readouterr()
    main(["predict", str(run), "a great film", "the awful plot", "--json"])
    thresholds = saved["thresholds"]
    for line in capsys.readouterr().out.strip().splitlines():
        item = json.loads(line)
        above = {name for name, p in item["scores"].items() if p >= thresholds[name]}
        assert [x["label"] for x in item["labels"]] == sorted(above, key=lambda n: -item["scores"][n])
    main(["predict", str(run), "a great film"])
    shown = capsys.readouterr().out.strip().split("\t")
    assert shown[1] == "a great film" and (shown[0] == "-" or all(p.split(":")[0] in thresholds for p in shown[0].split(",")))


def test_multi_label_list_column_and_unseen_labels(tmp_path):
    from sft_hub.tasks import text

    rows = {"train": [("a b", ["x", "y"]), ("c", []), ("d", ["y"])], "validation": [("e", ["x"])]}
    files = {}
    for split, items in rows.items():
        path = tmp_path / f"{split}.jsonl"
        path.write_text("".join(json.dumps({"text": t, "tags": tags}) + "\n" for t, tags in items))
        files[split] = str(path)
    cfg = parse_recipe({"task": "text_classification", "model": {"name_or_path": "x"}, "training": {"output_dir": str(tmp_path / "r")},
                        "data": {"source": "jsonl", "data_files": files, "text_columns": ["text"], "label_column": "tags",
                                 "problem_type": "multi_label_classification"}}).data
    data = text.load_data(cfg, 0)
    assert data.multi_label and data.labels == ["x", "y"]
    assert data.splits["train"]["labels"] == [[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]
    Path(files["validation"]).write_text(json.dumps({"text": "e", "tags": ["z"]}) + "\n")
    with pytest.raises(DataError, match=r"label 'z' in split 'validation' \(row 0\) never seen in training"):
        text.load_data(cfg, 0)


def test_multi_label_images_on_digit_attributes(tmp_path):
    from sft_hub.tasks.image_data import digit_attributes

    assert digit_attributes(1) == [] and digit_attributes(8) == ["even", "loop", "large"]
    raw = {"task": "image_classification", "model": {"name_or_path": "test_resnet", "image_size": 32},
           "data": {"builtin": "digits_attributes", "problem_type": "multi_label_classification", "threshold": "global",
                    "max_train_samples": 48, "max_eval_samples": 32, "hflip": 0.0},
           "strategy": {"name": "full"},
           "training": {"output_dir": str(tmp_path / "run"), "max_steps": 3, "per_device_train_batch_size": 16,
                        "gradient_accumulation_steps": 2, "save_strategy": "no", "report_to": "none", "seed": 0}}
    out = train(parse_recipe(raw))
    manifest = out["manifest"]
    assert manifest["labels"] == ["even", "large", "loop", "prime"] and manifest["thresholds"]["mode"] == "global"
    assert len(set(manifest["thresholds"]["thresholds"].values())) == 1
    reloaded = evaluate(load_run(tmp_path / "run"))["test"]
    # eval runs a BatchNorm-folded NHWC copy (fast_image): its logits differ by ~4e-9, but this 3-step model's
    # logits vary by only ~3e-7 across images (many exact ties), so the ranking behind mAP is float noise
    assert reloaded["mAP"] == pytest.approx(manifest["metrics"]["test"]["eval_test_mAP"], abs=1e-3)
    assert reloaded["f1_micro"] == pytest.approx(manifest["metrics"]["test"]["eval_test_f1_micro"], abs=1e-9)
    with pytest.raises(ConfigError, match=r"data.problem_type: class folders hold one label per image"):
        parse_recipe({**raw, "data": {"folder": str(tmp_path), "problem_type": "multi_label_classification"}})


def test_multi_label_audio(tmp_path):
    from audio_fixtures import TINY, make_clips

    clips = make_clips(tmp_path / "clips", per_class=6)
    name, config, fe = TINY["ast"]
    raw = {"task": "audio_classification", "model": {"name_or_path": name, "config": dict(config), "feature_extractor": dict(fe)},
           "data": {"source": "filenames", "data_dir": str(clips), "label_regex": r"^(\d_tone)_", "split_regex": {"test": r"_[0-1]\.wav$"},
                    "problem_type": "multi_label_classification", "label_delimiter": "_", "threshold": 0.5},
           "strategy": {"name": "head"},
           "training": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_train_batch_size": 4, "save_strategy": "no",
                        "report_to": "none", "seed": 0, "learning_rate": 1e-2}}
    out = train(parse_recipe(raw))
    manifest = out["manifest"]
    assert "tone" in manifest["labels"] and manifest["thresholds"] == {"mode": "fixed", "split": None,
                                                                       "thresholds": {n: 0.5 for n in manifest["labels"]}}
    reloaded = evaluate(load_run(tmp_path / "run"))["test"]
    # eval runs a BatchNorm-folded NHWC copy (fast_image): its logits differ by ~4e-9, but this 3-step model's
    # logits vary by only ~3e-7 across images (many exact ties), so the ranking behind mAP is float noise
    assert reloaded["mAP"] == pytest.approx(manifest["metrics"]["test"]["eval_test_mAP"], abs=1e-3)


# ---- EMA of weights ----

def test_ema_is_what_is_evaluated_and_saved(tiny_bert, sentiment_files, tmp_path):
    raw = text_recipe(tiny_bert, sentiment_files, tmp_path / "run", max_steps=4, save_strategy="steps", save_steps=4)
    raw["engine"] = {"ema": {"decay": 0.5}}
    out = train(parse_recipe(raw))
    run, manifest = tmp_path / "run", out["manifest"]
    assert manifest["ema"] == {"decay": 0.5, "warmup": False, "warmup_power": 0.75}
    checkpoint = run / "checkpoints" / "checkpoint-4"
    average = load_file(str(checkpoint / "ema.safetensors"))
    assert average and all("lora_" in k or "classifier" in k for k in average)  # trainable weights only, not the frozen base
    loaded = load_run(run)
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in average.items())  # the saved adapter holds the average ...
    raw_weights = load_file(str(checkpoint / "adapter_model.safetensors"))  # ... the checkpoint the raw weights (for resuming)
    lora_a = [k for k in average if "lora_A" in k][0]
    assert not torch.equal(raw_weights[lora_a.replace(".default", "")], average[lora_a])
    reloaded = evaluate(loaded)["validation"]
    assert reloaded["accuracy"] == manifest["metrics"]["validation"]["eval_validation_accuracy"]
    assert reloaded["f1_macro"] == pytest.approx(manifest["metrics"]["validation"]["eval_validation_f1_macro"])
