"""Text classification (single sentences and pairs; regression for one-output targets such as STS-B).

Data: GLUE (`glue: <task>`, from the Hub or a local `data_dir` in the GLUE TSV layout), the embedded
sentiment set (`builtin: sentiment`), a Hub dataset (`dataset: <id>`), or the user's own CSV / TSV /
JSON / JSONL files (`source` + `data_files`). Models: any `AutoModelForSequenceClassification`.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset, DatasetDict
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from sft_hub.base_model import resolve_source, weight_files
from sft_hub.config import suggest
from sft_hub.errors import ConfigError, DataError
from sft_hub.metrics import make_compute_metrics
from sft_hub.tasks import labels as label_utils
from sft_hub.tasks import glue
from sft_hub.tasks.base import BuiltModel, TaskData
from sft_hub.tasks.files import load_files

BUILTIN = {"sentiment": "data/sentiment"}
lora_target_modules = None  # peft knows the attention projections of BERT-family models
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


@dataclass
class ModelConfig:
    name_or_path: str
    revision: str | None = None
    trust_remote_code: bool = False
    dropout: float | None = None  # overrides hidden and attention dropout of the config when set


@dataclass
class DataConfig:
    glue: str | None = None  # cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli
    data_dir: str | None = None  # local folder in the GLUE TSV layout (with `glue`)
    builtin: str | None = None  # data that ships with sft-hub: sentiment
    dataset: str | None = None  # a Hub dataset id
    dataset_config: str | None = None
    dataset_revision: str | None = None
    source: Literal["csv", "tsv", "json", "jsonl"] | None = None
    data_files: dict[str, str] | None = None  # split -> file
    text_columns: list[str] | None = None  # one or two
    label_column: str = "label"
    problem_type: Literal["auto", "classification", "regression"] = "auto"
    train_split: str = "train"
    eval_splits: list[str] | None = None
    validation_fraction: float | None = None  # carve a seeded validation split out of train
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    streaming: bool = False  # stream the train split (source or dataset); needs training.max_steps
    labels: list[str] | None = None  # class names in id order, for streamed data that does not declare them

    def validate(self, where: str) -> None:
        sources = [k for k in ("glue", "builtin", "dataset", "source") if getattr(self, k)]
        if len(sources) != 1:
            raise ConfigError(f"{where}: give exactly one of glue, builtin, dataset or source (got {sources or 'none'})")
        if self.glue and self.glue not in glue.TASKS:
            hint = suggest(self.glue, glue.TASKS) or f" (GLUE tasks: {', '.join(glue.TASKS)})"
            raise ConfigError(f"{where}.glue: unknown GLUE task '{self.glue}'{hint}")
        if self.builtin and self.builtin not in BUILTIN:
            raise ConfigError(f"{where}.builtin: unknown built-in data '{self.builtin}' (known: {', '.join(BUILTIN)})")
        if self.data_dir and not self.glue:
            raise ConfigError(f"{where}.data_dir: only used with glue; use source + data_files for your own files")
        if self.data_dir and not Path(self.data_dir).is_dir():
            raise ConfigError(f"{where}.data_dir: folder {self.data_dir} not found")
        if self.source:
            if not self.data_files or "train" not in self.data_files and self.train_split not in (self.data_files or {}):
                raise ConfigError(f"{where}.data_files: needs at least a '{self.train_split}' file for source {self.source}")
            for split, f in self.data_files.items():
                if not Path(f).is_file():
                    raise ConfigError(f"{where}.data_files.{split}: file {f} not found")
        if (self.source or self.dataset) and not self.text_columns:
            raise ConfigError(f"{where}.text_columns: required with {'source' if self.source else 'dataset'} (one or two column names)")
        if self.text_columns is not None and not 1 <= len(self.text_columns) <= 2:
            raise ConfigError(f"{where}.text_columns: give one or two columns, got {len(self.text_columns)}")
        if self.validation_fraction is not None and not 0 < self.validation_fraction < 1:
            raise ConfigError(f"{where}.validation_fraction: must be between 0 and 1, got {self.validation_fraction}")
        if self.max_length < 1:
            raise ConfigError(f"{where}.max_length: must be >= 1, got {self.max_length}")
        if self.streaming:
            if not (self.source or self.dataset):
                raise ConfigError(f"{where}.streaming: only for source + data_files or a Hub dataset")
            for name in ("validation_fraction", "max_train_samples"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{where}.{name}: not available with streaming (use training.max_steps)")


def _select_text_columns(splits: DatasetDict, data: DataConfig, origin: str) -> DatasetDict:
    out = {}
    for split, ds in splits.items():
        for col in [*data.text_columns, data.label_column]:
            if col not in ds.column_names:
                what = "label column" if col == data.label_column else "text column"
                raise DataError(f"data.{'label_column' if col == data.label_column else 'text_columns'}: {what} {col!r} not in {origin} split '{split}'; columns are {', '.join(ds.column_names)}")
        rename = {data.text_columns[0]: "text_a", data.label_column: "raw_label"}
        if len(data.text_columns) > 1:
            rename[data.text_columns[1]] = "text_b"
        ds = ds.select_columns(list(rename)).rename_columns(rename)
        out[split] = ds
    return DatasetDict(out)


def load_data(data: DataConfig, seed: int) -> TaskData:
    labels: list[str] | None
    if data.streaming:
        return _load_stream(data)
    if data.glue:
        splits = glue.load_local(data.glue, Path(data.data_dir)) if data.data_dir else glue.load_hub(data.glue, data.dataset_revision)
        spec = glue.TASKS[data.glue]
        labels = list(spec.labels) if spec.labels else None
        train_split, evals = "train", [s for s in splits if s != "train"]
    else:
        if data.builtin:
            folder = importlib.resources.files("sft_hub") / BUILTIN[data.builtin]
            raw = load_files("jsonl", {"train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")})
            data.text_columns = data.text_columns or ["text"]
            origin = f"built-in {data.builtin}"
        elif data.dataset:
            from datasets import load_dataset

            raw = load_dataset(data.dataset, data.dataset_config, revision=data.dataset_revision)
            origin = f"dataset {data.dataset}"
        else:
            raw = load_files(data.source, data.data_files)
            origin = "data_files"
        raw = _select_text_columns(raw, data, origin)
        splits, train_split, evals = label_utils.choose_splits(raw, data.train_split, data.eval_splits, data.validation_fraction, seed)
        splits, labels = label_utils.encode_labels(splits, train_split, evals, data.problem_type)
    splits = label_utils.limit(splits, train_split, evals, data.max_train_samples, data.max_eval_samples, seed)
    return TaskData(splits=splits, train_split=train_split, eval_splits=evals, labels=labels)


def _load_stream(data: DataConfig) -> TaskData:
    """A streamed train split and in-memory eval splits, with the map-style path's columns and labels."""
    from datasets import ClassLabel, load_dataset

    from sft_hub import streaming

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


def load_processor(model: ModelConfig, saved: Path | None = None) -> Any:
    source = str(saved) if saved else resolve_source(model.name_or_path)
    return AutoTokenizer.from_pretrained(source, revision=None if saved else model.revision, trust_remote_code=model.trust_remote_code)


def save_processor(processor: Any, path: Path) -> None:
    processor.save_pretrained(path)


def encode(splits: DatasetDict, processor: Any, data: DataConfig, model: ModelConfig, train_split: str | None) -> DatasetDict:
    def tokenize(batch: dict) -> dict:
        enc = processor(batch["text_a"], batch["text_b"] if "text_b" in batch else None, truncation=True, max_length=data.max_length)
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        return enc

    out = {}
    for name, ds in splits.items():  # a streamed split (IterableDataset) may not know its columns before reading
        columns = ds.column_names or ["text_a", "text_b"][:len(data.text_columns or ["text_a"])]
        drop = [c for c in ("text_a", "text_b") if c in columns]
        progress = {"desc": f"tokenizing {name}"} if isinstance(ds, Dataset) else {}
        out[name] = ds.map(tokenize, batched=True, remove_columns=drop, **progress)
    return DatasetDict(out)


def collator(processor: Any, data: DataConfig):
    pad = DataCollatorWithPadding(processor)

    def collate(features: list[dict]) -> dict:  # dynamic padding; `length` is for the length-grouped sampler only
        return pad([{k: v for k, v in f.items() if k in MODEL_INPUTS} for f in features])

    return collate


def build_model(model: ModelConfig, labels: list[str] | None) -> BuiltModel:
    source = resolve_source(model.name_or_path)
    kwargs: dict[str, Any] = {"num_labels": 1, "problem_type": "regression"} if labels is None else {
        "num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)},
        "problem_type": "single_label_classification"}
    if model.dropout is not None:
        kwargs.update(hidden_dropout_prob=model.dropout, attention_probs_dropout_prob=model.dropout)
    try:
        net, info = AutoModelForSequenceClassification.from_pretrained(
            source, revision=model.revision, trust_remote_code=model.trust_remote_code, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as exc:  # missing model; custom code refused without trust_remote_code
        raise ConfigError(f"model.name_or_path: cannot load {model.name_or_path!r}: {str(exc).strip().splitlines()[0]}") from None
    head = sorted({k.rsplit(".", 1)[0] for k in info["missing_keys"]}) or ["classifier"]
    return BuiltModel(net, _outermost(head), weight_files(source, model.revision), source, model.revision)


def _outermost(names: list[str]) -> list[str]:
    """Module names of the new head, without names nested inside another listed module."""
    return [n for n in names if not any(n != m and n.startswith(m + ".") for m in names)]


def metrics(data: DataConfig, labels: list[str] | None):
    extras = glue.TASKS[data.glue].metric_extras if data.glue else (("f1",) if labels is not None and len(labels) == 2 else ())
    return make_compute_metrics(regression=labels is None, extras=extras)


def main_metric(data: DataConfig, labels: list[str] | None) -> str:
    if data.glue:
        return glue.TASKS[data.glue].main_metric
    return "pearson" if labels is None else "accuracy"


def read_inputs(data: DataConfig, values: list[str], file: Path | None) -> Dataset:
    """Rows to predict on: TEXT arguments (a pair as 'first ||| second') or a CSV/TSV/JSON/JSONL file."""
    pair = bool(data.glue and len(glue.TASKS[data.glue].hub_columns) == 2) or len(data.text_columns or []) == 2
    if file is not None:
        suffix = file.suffix.lstrip(".").lower()
        ds = load_files(suffix, {"predict": str(file)})["predict"]
        cols = data.text_columns or (list(glue.TASKS[data.glue].hub_columns) if data.glue else ["text"])
        for c in cols:
            if c not in ds.column_names:
                raise DataError(f"--file {file}: column {c!r} not found; columns are {', '.join(ds.column_names)}")
        rows = {"text_a": [str(v) for v in ds[cols[0]]]}
        if len(cols) > 1:
            rows["text_b"] = [str(v) for v in ds[cols[1]]]
        return Dataset.from_dict(rows)
    if pair:
        parts = [v.split("|||", 1) for v in values]
        bad = [v for v, p in zip(values, parts) if len(p) != 2]
        if bad:
            raise DataError(f"input {bad[0]!r}: this model takes sentence pairs; write them as 'first ||| second'")
        return Dataset.from_dict({"text_a": [p[0].strip() for p in parts], "text_b": [p[1].strip() for p in parts]})
    return Dataset.from_dict({"text_a": list(values)})


def describe_input(row: dict) -> str:
    return row["text_a"] + (f" ||| {row['text_b']}" if row.get("text_b") else "")
