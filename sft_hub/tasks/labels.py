"""Shared by every task: choosing train/eval splits, turning raw labels into ids, and subsetting.

Input splits carry a `raw_label` column; output splits carry `labels` (class id, or float for regression;
for multi-label data a multi-hot float row, one entry per label). Multi-label raw labels are a list
column or a string split on `data.label_delimiter` ("" means no labels). A label that appears in an eval
split but never in training is an error naming the split and the value. `check_label_options` validates
the label settings every task's DataConfig shares (problem_type, label_delimiter, class_weights, threshold).
"""

from __future__ import annotations

import math
import typing
from typing import Any

from datasets import ClassLabel, DatasetDict, List, Value

from sft_hub.errors import ConfigError, DataError

MULTI_LABEL = "multi_label_classification"
THRESHOLD_MODES = ("per_label", "global")

EVAL_NAMES = ("validation", "valid", "val", "dev", "test")


def check_labels_present(splits: DatasetDict, files: dict[str, str] | None, column: str, header: bool = True) -> None:
    """Every row has a label: a missing or empty label field is an error naming the file and row, never a class ''."""
    for split, ds in splits.items():
        values = ds["raw_label"]
        bad = next((i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())), None)
        if bad is not None:
            where = f"file {files[split]}" if files and split in files else f"split {split!r}"
            line = f" (line {bad + 2})" if files and split in files and header else ""
            raise DataError(f"data.label_column: {where} row {bad + 1}{line} has no {column!r} label (missing or empty field)")


def holdout_name(splits: typing.Iterable[str]) -> str:
    """The name of a validation split carved out of train (`data.validation_fraction`).

    "validation", unless the data already has a split of that name (GLUE's dev set, a validation file):
    then "holdout", so the data's own split stays what it is and can still be evaluated (`sft-hub select`
    ranks on the carved split and reports the data's own one).
    """
    return "holdout" if "validation" in splits else "validation"


def choose_splits(splits: DatasetDict, train: str, evals: list[str] | None, fraction: float | None, seed: int):
    if train not in splits:
        raise DataError(f"data.train_split: split {train!r} not found; splits are {', '.join(splits)}")
    if fraction is not None:
        held = holdout_name(splits)
        parts = splits[train].train_test_split(test_size=fraction, seed=seed)
        splits = DatasetDict({**{k: v for k, v in splits.items() if k != train}, train: parts["train"], held: parts["test"]})
        evals = evals or [held]
    if evals is None:
        evals = [s for s in EVAL_NAMES if s in splits][:1]
    for name in evals:
        if name not in splits:
            raise DataError(f"data.eval_splits: split {name!r} not found; splits are {', '.join(splits)}")
    return DatasetDict({k: splits[k] for k in [train, *evals]}), train, list(evals)


def _is_regression(values: list, problem_type: str) -> bool:
    if problem_type != "auto":
        return problem_type == "regression"
    return any(isinstance(v, float) and not float(v).is_integer() for v in values)


def encode_labels(splits: DatasetDict, train: str, evals: list[str], problem_type: str = "auto"):
    """raw_label -> labels; returns (splits, class names or None for regression)."""
    for name in [train, *evals]:
        if len(splits[name]) == 0:
            raise DataError(f"data: split {name!r} is empty")
    feature = splits[train].features["raw_label"]
    train_values = splits[train]["raw_label"]
    if None in train_values:
        raise DataError(f"data.label_column: split {train!r} row {train_values.index(None)} has no label")
    if _is_regression(train_values, problem_type):
        def to_float(row: dict, idx: int, split: str) -> dict:
            try:
                return {"labels": float(row["raw_label"])}
            except (TypeError, ValueError):
                raise DataError(f"data.label_column: split {split!r} row {idx}: {row['raw_label']!r} is not a number") from None
        out = {n: ds.map(to_float, with_indices=True, fn_kwargs={"split": n}, remove_columns=["raw_label"]) for n, ds in splits.items()}
        return DatasetDict(out), None
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
        keys = list(range(len(names)))
    else:
        keys = sorted(set(train_values), key=lambda v: (str(type(v)), v))
        names = [str(v) for v in keys]
    index = {k: i for i, k in enumerate(keys)}
    out = {}
    for name, ds in splits.items():
        values = ds["raw_label"]
        unseen = [(i, v) for i, v in enumerate(values) if v not in index]
        if unseen:
            i, v = unseen[0]
            raise DataError(f"data: label {v!r} in split {name!r} (row {i}) never seen in training; training labels are {', '.join(names)}")
        out[name] = ds.map(lambda row: {"labels": index[row["raw_label"]]}, remove_columns=["raw_label"])
    return DatasetDict(out), names


def limit(splits: DatasetDict, train: str, evals: list[str], max_train: int | None, max_eval: int | None, seed: int) -> DatasetDict:
    out = dict(splits)
    if max_train is not None and max_train < len(splits[train]):
        out[train] = splits[train].shuffle(seed=seed).select(range(max_train))
    for name in evals:
        if max_eval is not None and max_eval < len(splits[name]):
            out[name] = splits[name].select(range(max_eval))
    for name, ds in out.items():
        if len(ds) == 0:
            field = "max_train_samples" if name == train else "max_eval_samples"
            raise DataError(f"data: split {name!r} is empty after subsetting (data.{field})")
    return DatasetDict(out)


def check_label_options(data: Any, where: str) -> None:
    """Validate the shared label settings of a task's DataConfig (before any data is read)."""
    multi = data.problem_type == MULTI_LABEL
    if data.label_delimiter is not None and (not multi or data.label_delimiter == ""):
        raise ConfigError(f"{where}.label_delimiter: a non-empty separator, used with problem_type: {MULTI_LABEL} only")
    weights = data.class_weights
    if isinstance(weights, str) and weights != "balanced":
        raise ConfigError(f"{where}.class_weights: 'balanced' or a mapping label -> weight, got {weights!r}")
    if isinstance(weights, dict):
        for key, value in weights.items():
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{where}.class_weights.{key}: a finite weight >= 0, got {value}")
        if weights and not any(weights.values()) and len(weights) > 1:
            raise ConfigError(f"{where}.class_weights: every weight is 0")
    threshold = data.threshold
    if threshold is not None:
        if not multi:
            raise ConfigError(f"{where}.threshold: only used with problem_type: {MULTI_LABEL}")
        if isinstance(threshold, str) and threshold not in THRESHOLD_MODES:
            raise ConfigError(f"{where}.threshold: a probability in (0, 1), or one of {', '.join(THRESHOLD_MODES)}; got {threshold!r}")
        if isinstance(threshold, float) and not 0 < threshold < 1:
            raise ConfigError(f"{where}.threshold: a probability in (0, 1), got {threshold}")


def _label_list(value: Any, delimiter: str | None, split: str, row: int) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, str) and delimiter is not None:
        return [part.strip() for part in value.split(delimiter) if part.strip()]
    if isinstance(value, str):
        raise DataError(f"data.label_delimiter: split {split!r} row {row} has the label string {value!r}; "
                        "multi-label data needs a list column, or set label_delimiter (e.g. '|') to split strings")
    raise DataError(f"data.label_column: split {split!r} row {row}: {value!r} is not a list of labels")


def encode_multi_labels(splits: DatasetDict, train: str, evals: list[str], delimiter: str | None):
    """raw_label (label lists) -> multi-hot float `labels`; returns (splits, label names sorted)."""
    for name in [train, *evals]:
        if len(splits[name]) == 0:
            raise DataError(f"data: split {name!r} is empty")
    lists = {name: [_label_list(v, delimiter, name, i) for i, v in enumerate(ds["raw_label"])] for name, ds in splits.items()}
    names = sorted({label for row in lists[train] for label in row})
    if not names:
        raise DataError(f"data.label_column: split {train!r} has no labels at all")
    index = {n: i for i, n in enumerate(names)}
    out = {}
    for name, ds in splits.items():
        rows = []
        for i, labels in enumerate(lists[name]):
            unseen = [v for v in labels if v not in index]
            if unseen:
                raise DataError(f"data: label {unseen[0]!r} in split {name!r} (row {i}) never seen in training; training labels are {', '.join(names)}")
            hot = [0.0] * len(names)
            for v in labels:
                hot[index[v]] = 1.0
            rows.append(hot)
        out[name] = ds.remove_columns("raw_label").add_column("labels", rows, feature=List(Value("float32")))
    return DatasetDict(out), names
