"""Shared by every task: choosing train/eval splits, turning raw labels into ids, and subsetting.

Input splits carry a `raw_label` column; output splits carry `labels` (class id, or float for regression).
A label that appears in an eval split but never in training is an error naming the split and the value.
"""

from __future__ import annotations

import typing

from datasets import ClassLabel, DatasetDict

from sft_hub.errors import DataError

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
