"""Streamed text data (`data.streaming: true`): the train split as a `datasets.IterableDataset`.

The same columns (`text_a`, `text_b`, `labels`) and label ids as text.py's map-style path, so the task's
own `encode` and collator serve both. Eval splits are read whole into memory (bounded by
`max_eval_samples`) so metrics count every example once; sharding and exact resume live in
sft_hub/streaming.py.
"""

from __future__ import annotations

from typing import Any

from datasets import ClassLabel, DatasetDict, load_dataset

from sft_hub import streaming
from sft_hub.errors import ConfigError, DataError
from sft_hub.tasks import labels as label_utils
from sft_hub.tasks.base import TaskData


def check_config(data: Any, where: str) -> None:
    """The streamed data settings of a text DataConfig (before anything is read)."""
    if not (data.source or data.dataset):
        raise ConfigError(f"{where}.streaming: only for source + data_files or a Hub dataset")
    for name in ("validation_fraction", "max_train_samples"):
        if getattr(data, name) is not None:
            raise ConfigError(f"{where}.{name}: not available with streaming (use training.max_steps)")
    if data.problem_type == label_utils.MULTI_LABEL or isinstance(data.class_weights, str):
        what = "problem_type" if data.problem_type == label_utils.MULTI_LABEL else "class_weights"
        raise ConfigError(f"{where}.{what}: not available with streaming (it needs every training label before the first step)")


def load_data(data: Any) -> TaskData:
    """A streamed train split and in-memory eval splits, with the map-style path's columns and labels."""
    if data.source:
        streams, origin = streaming.open_files(data.source, data.data_files), "data_files"
    else:
        streams = dict(load_dataset(data.dataset, data.dataset_config, revision=data.dataset_revision, streaming=True))
        origin = f"dataset {data.dataset}"
    if data.train_split not in streams:
        raise DataError(f"data.train_split: split {data.train_split!r} not found; splits are {', '.join(streams)}")
    evals = data.eval_splits if data.eval_splits is not None else [s for s in label_utils.EVAL_NAMES if s in streams][:1]
    for name in evals:
        if name not in streams:
            raise DataError(f"data.eval_splits: split {name!r} not found; splits are {', '.join(streams)}")
    feature = (streams[data.train_split].features or {}).get(data.label_column)
    labels = None if data.problem_type == "regression" else data.labels or (list(feature.names) if isinstance(feature, ClassLabel) else None)
    if labels is None and data.problem_type != "regression":
        raise ConfigError("data.labels: required with streaming (the class names in id order), unless the dataset declares them "
                          "or problem_type is regression")
    first = next(iter(streams[data.train_split]), None)
    if first is None:
        raise DataError(f"data: split {data.train_split!r} is empty")
    rename = {data.text_columns[0]: "text_a", data.label_column: "raw_label", **({data.text_columns[1]: "text_b"} if len(data.text_columns) > 1 else {})}
    for col in rename:
        if col not in first:
            what = "label_column" if col == data.label_column else "text_columns"
            raise DataError(f"data.{what}: column {col!r} not in {origin} split {data.train_split!r}; columns are {', '.join(first)}")
    splits = {}
    for name in [data.train_split, *evals]:
        stream = streams[name].select_columns(list(rename)).rename_columns(rename)
        if name != data.train_split:
            stream = streaming.materialise(stream, data.max_eval_samples)
            if len(stream) == 0:
                raise DataError(f"data: split {name!r} is empty")
        splits[name] = stream.map(streaming.label_mapper(labels, name), remove_columns=["raw_label"])
    return TaskData(splits=DatasetDict(splits), train_split=data.train_split, eval_splits=list(evals), labels=labels,
                    info={"streaming": True})
