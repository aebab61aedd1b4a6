"""Streamed text data (`data.streaming: true`): same preprocessing as map-style, sharding, config errors."""

from __future__ import annotations

import itertools
import shutil

import pytest
from conftest import text_recipe, write_sentiment_csv

from sft_hub.config import parse_recipe
from sft_hub.errors import ConfigError
from sft_hub.streaming import TrainStream
from sft_hub.tasks import text


def data_config(files, **extra) -> text.DataConfig:
    base = {"source": "csv", "data_files": files, "text_columns": ["review"], "label_column": "sentiment", "max_length": 32}
    return text.DataConfig(**{**base, **extra})


@pytest.mark.parametrize("origin", ["files", "dataset folder"])
def test_streamed_rows_are_preprocessed_like_map_style(tiny_bert, tmp_path, origin):
    files = write_sentiment_csv(tmp_path, n_train=24, n_val=6)
    tokenizer = text.load_processor(text.ModelConfig(str(tiny_bert)))
    mapped = text.load_data(data_config(files), seed=0)
    if origin == "files":
        cfg = data_config(files, streaming=True, labels=["neg", "pos"])
    else:  # `dataset:` (the Hub path) pointed at a local folder, so it runs offline
        folder = tmp_path / "hub_like"
        folder.mkdir()
        for split in ("train", "validation"):
            shutil.copy(files[split], folder / f"{split}.csv")
        cfg = text.DataConfig(dataset=str(folder), text_columns=["review"], label_column="sentiment", max_length=32,
                              streaming=True, labels=["neg", "pos"])
    streamed = text.load_data(cfg, seed=0)
    assert streamed.labels == mapped.labels == ["neg", "pos"] and streamed.eval_splits == ["validation"]
    a = text.encode(mapped.splits, tokenizer, data_config(files), None, "train")
    b = text.encode(streamed.splits, tokenizer, cfg, None, "train")
    rows = list(itertools.islice(b["train"], 24))
    assert [r["input_ids"] for r in rows] == a["train"]["input_ids"] and [r["labels"] for r in rows] == a["train"]["labels"]
    assert b["validation"]["input_ids"] == a["validation"]["input_ids"] and len(b["validation"]) == 6  # eval read whole, once


def test_ranks_get_disjoint_parts_of_each_pass(tmp_path):
    files = write_sentiment_csv(tmp_path, n_train=20, n_val=4)
    train = text.load_data(data_config(files, streaming=True, labels=["neg", "pos"]), seed=0).splits["train"]
    parts = [list(itertools.islice(TrainStream(train, rank, 2), 20)) for rank in (0, 1)]  # two passes of 10 each
    first_pass = [{r["text_a"] for r in part[:10]} for part in parts]
    assert not first_pass[0] & first_pass[1] and first_pass[0] | first_pass[1] == {r["text_a"] for r in train}
    assert [r["text_a"] for r in parts[0][10:]] == [r["text_a"] for r in parts[0][:10]]  # the next pass repeats the stream


def test_streaming_errors_name_the_field(tiny_bert, tmp_path):
    files = write_sentiment_csv(tmp_path, n_train=8, n_val=4)
    raw = text_recipe(tiny_bert, files, tmp_path / "run")
    raw["data"].update(streaming=True, max_train_samples=4)
    with pytest.raises(ConfigError, match=r"data.max_train_samples: not available with streaming"):
        parse_recipe(raw)
    with pytest.raises(ConfigError, match=r"data.labels: required with streaming"):
        text.load_data(data_config(files, streaming=True), seed=0)
    from sft_hub.engine import train

    raw["data"].pop("max_train_samples")
    raw["data"]["labels"] = ["neg", "pos"]
    raw["training"].pop("max_steps")
    raw["training"]["num_train_epochs"] = 1
    with pytest.raises(ConfigError, match=r"data.streaming: needs training.max_steps"):
        train(parse_recipe(raw))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_streaming_refuses_what_needs_every_training_row(tiny_bert, tmp_path):
    files = write_sentiment_csv(tmp_path, n_train=8, n_val=4)
    raw = text_recipe(tiny_bert, files, tmp_path / "run")
    raw["data"].update(streaming=True, labels=["neg", "pos"], class_weights="balanced")
    with pytest.raises(ConfigError, match=r"data.class_weights: not available with streaming"):
        parse_recipe(raw)
    raw["data"].update(class_weights=None, problem_type="multi_label_classification")
    with pytest.raises(ConfigError, match=r"data.problem_type: not available with streaming"):
        parse_recipe(raw)
    from sft_hub.engine import train

    raw["data"]["problem_type"] = "auto"
    raw["strategy"] = {"name": "linear_probe"}
    with pytest.raises(ConfigError, match=r"strategy.name: linear_probe is fitted on every training row at once; not available with data.streaming"):
        train(parse_recipe(raw))
    assert not (tmp_path / "run").exists()
