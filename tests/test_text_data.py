"""The user's own text files (CSV/TSV/JSON/JSONL), label kinds, seeded validation splits, Hub GLUE columns."""

from __future__ import annotations

import json

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from sft_hub.config import from_dict
from sft_hub.tasks import glue, text


def data_cfg(**kw):
    return from_dict(text.DataConfig, kw, "data")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_integer_labels_and_sentence_pairs_from_jsonl(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}", "stars": [1, 5][i % 2]} for i in range(10)]
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows), "validation": write_jsonl(tmp_path / "dev.jsonl", rows[:4])}
    data = text.load_data(data_cfg(source="jsonl", data_files=files, text_columns=["q", "a"], label_column="stars"), seed=0)
    assert data.labels == ["1", "5"] and data.splits["train"]["labels"][:2] == [0, 1]
    assert data.splits["validation"][1] == {"text_a": "question 1", "text_b": "answer 1", "labels": 1}


def test_float_target_is_regression_and_validation_fraction_is_seeded(tmp_path):
    rows = [{"text": f"sentence {i}", "score": i / 4} for i in range(20)]
    cfg = data_cfg(source="json", data_files={"train": write_jsonl(tmp_path / "t.json", rows)}, text_columns=["text"],
                   label_column="score", validation_fraction=0.25)
    first, second = text.load_data(cfg, seed=3), text.load_data(cfg, seed=3)
    assert first.labels is None and first.eval_splits == ["validation"] and len(first.splits["validation"]) == 5
    assert first.splits["validation"]["text_a"] == second.splits["validation"]["text_a"]
    assert isinstance(first.splits["train"][0]["labels"], float)


def test_builtin_sentiment_ships_balanced():
    data = text.load_data(data_cfg(builtin="sentiment"), seed=0)
    assert data.labels == ["negative", "positive"] and data.eval_splits == ["test"]
    assert len(data.splits["train"]) == 320 and sum(data.splits["train"]["labels"]) == 160
    assert len(data.splits["test"]) == 80 and sum(data.splits["test"]["labels"]) == 40


@pytest.mark.parametrize("task", ["mnli", "qnli", "stsb"])
def test_hub_glue_columns_are_mapped(monkeypatch, task):
    spec = glue.TASKS[task]
    label = Value("float32") if spec.labels is None else ClassLabel(names=list(spec.labels))
    features = Features({**{c: Value("string") for c in spec.hub_columns}, "label": label, "idx": Value("int32")})
    row = {**{c: f"{c} text" for c in spec.hub_columns}, "label": 1, "idx": 0}
    split = Dataset.from_list([row, row], features=features)
    fake = DatasetDict({name: split for name in ["train", "test", *glue.eval_splits(task)]})
    seen = {}
    monkeypatch.setattr(glue, "load_dataset", lambda *a, **k: seen.update(args=a) or fake)
    data = text.load_data(data_cfg(glue=task), seed=0)
    assert seen["args"] == ("nyu-mll/glue", task)
    assert data.eval_splits == glue.eval_splits(task) and "test" not in data.splits
    assert data.splits["train"][0]["text_a"] == f"{spec.hub_columns[0]} text" and data.splits["train"][0]["text_b"] == f"{spec.hub_columns[1]} text"
