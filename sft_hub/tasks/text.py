"""Text classification (single sentences and pairs; regression for one-output targets such as STS-B).

Data: GLUE (`glue: <task>`, from the Hub or a local `data_dir` in the GLUE TSV layout), the embedded
sentiment set (`builtin: sentiment`), a Hub dataset (`dataset: <id>`), or the user's own CSV / TSV /
JSON / JSONL files (`source` + `data_files`). Models: any `AutoModelForSequenceClassification`.
"""

from __future__ import annotations

import importlib.resources
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from datasets import Dataset, DatasetDict
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from torch import nn

from sft_hub.base_model import BaseRef, resolve_source, weight_files
from sft_hub.model_info import ModelInfo, describe, top_level_head
from sft_hub.schema import suggest
from sft_hub.errors import ConfigError, DataError
from sft_hub.metrics import MultiLabelMetrics, make_compute_metrics
from sft_hub.tasks import labels as label_utils
from sft_hub.tasks import glue
from sft_hub.tasks import new_head
from sft_hub.tasks.base import BuiltModel, TaskData
from sft_hub.tasks.files import load_files

log = logging.getLogger("sft_hub")
BUILTIN = {"sentiment": "data/sentiment"}
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


@dataclass
class ModelConfig:
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("name_or_path",)
    name_or_path: str
    revision: str | None = None
    trust_remote_code: bool = False
    dropout: float | None = None  # overrides hidden and attention dropout of the config when set

    def validate(self, where: str) -> None:
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"{where}.dropout: must be in [0, 1), got {self.dropout}")


@dataclass
class DataConfig:
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("data_dir", "data_files")
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
    problem_type: Literal["auto", "classification", "regression", "multi_label_classification"] = "auto"
    label_delimiter: str | None = None  # multi-label: split label strings on this ("a|b"); a list column needs none
    class_weights: str | dict[str | int, float] | None = None  # "balanced" or label -> weight: loss weight per class (sft_hub/losses.py)
    threshold: float | Literal["per_label", "global"] | None = None  # multi-label decision thresholds; default per_label, chosen on validation
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
        if self.glue and self.problem_type == label_utils.MULTI_LABEL:
            raise ConfigError(f"{where}.problem_type: GLUE tasks are single-label; multi-label data needs source, dataset or builtin")
        label_utils.check_label_options(self, where)
        if self.streaming:
            from sft_hub.tasks import text_stream

            text_stream.check_config(self, where)


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
        from sft_hub.tasks import text_stream

        return text_stream.load_data(data)
    if data.glue:
        splits = glue.load_local(data.glue, Path(data.data_dir)) if data.data_dir else glue.load_hub(data.glue, data.dataset_revision)
        spec = glue.TASKS[data.glue]
        labels = list(spec.labels) if spec.labels else None
        train_split, evals = "train", [s for s in splits if s != "train"]
        if data.validation_fraction is not None or data.eval_splits:  # both were ignored for GLUE before
            splits, train_split, evals = label_utils.choose_splits(splits, "train", data.eval_splits, data.validation_fraction, seed)
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
        if data.problem_type != label_utils.MULTI_LABEL:  # multi-label: an empty field means "no label applies"
            label_utils.check_labels_present(raw, data.data_files if data.source else None, data.label_column,
                                             header=data.source in ("csv", "tsv"))
        splits, train_split, evals = label_utils.choose_splits(raw, data.train_split, data.eval_splits, data.validation_fraction, seed)
        if data.problem_type == label_utils.MULTI_LABEL:
            splits, labels = label_utils.encode_multi_labels(splits, train_split, evals, data.label_delimiter)
        else:
            splits, labels = label_utils.encode_labels(splits, train_split, evals, data.problem_type)
    splits = label_utils.limit(splits, train_split, evals, data.max_train_samples, data.max_eval_samples, seed)
    return TaskData(splits=splits, train_split=train_split, eval_splits=evals, labels=labels,
                    multi_label=data.problem_type == label_utils.MULTI_LABEL)


def load_processor(model: ModelConfig, saved: Path | None = None) -> Any:
    source = str(saved) if saved else resolve_source(model.name_or_path)
    try:
        return AutoTokenizer.from_pretrained(source, revision=None if saved else model.revision, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as exc:  # no such model / folder, offline without a cached copy, no tokenizer files
        where = f"{saved}" if saved else f"model.name_or_path: {model.name_or_path!r}"
        raise ConfigError(f"{where}: cannot load a tokenizer: {str(exc).strip().splitlines()[0]}") from None


def save_processor(processor: Any, path: Path) -> None:
    processor.save_pretrained(path)


def tokenize(processor: Any, data: DataConfig, text_a: list[str], text_b: list[str] | None = None) -> dict:
    """Token ids (unpadded) and their `length`; `encode` maps it over splits, prediction calls it directly."""
    enc = processor(text_a, text_b, truncation=True, max_length=data.max_length)
    enc["length"] = [len(ids) for ids in enc["input_ids"]]
    return enc


def encode(splits: DatasetDict, processor: Any, data: DataConfig, model: ModelConfig, train_split: str | None) -> DatasetDict:
    def tokenize_batch(batch: dict) -> dict:
        return tokenize(processor, data, batch["text_a"], batch["text_b"] if "text_b" in batch else None)

    out = {}
    for name, ds in splits.items():  # a streamed split (IterableDataset) may not know its columns before reading
        columns = ds.column_names or ["text_a", "text_b"][:len(data.text_columns or ["text_a"])]
        drop = [c for c in ("text_a", "text_b") if c in columns]
        progress = {"desc": f"tokenizing {name}"} if isinstance(ds, Dataset) else {}
        out[name] = ds.map(tokenize_batch, batched=True, remove_columns=drop, **progress)
    encoded = DatasetDict(out)
    warn_truncated(splits, encoded, processor, data.max_length)
    return encoded


def warn_truncated(raw: DatasetDict, encoded: DatasetDict, processor: Any, max_length: int | None) -> None:
    """Say how many rows per split lost their end to max_length (only rows that fill max_length are re-checked)."""
    limit = max_length or getattr(processor, "model_max_length", None)
    if not limit or limit > 1_000_000:  # tokenizers without a limit report a huge sentinel
        return
    for name, ds in encoded.items():
        if not isinstance(ds, Dataset):  # a streamed train split is tokenised as it is read
            continue
        full = [i for i, n in enumerate(ds["length"]) if n >= limit]
        if not full:
            continue
        rows = raw[name].select(full)
        pair = list(rows["text_b"]) if "text_b" in rows.column_names else None
        ids = processor(list(rows["text_a"]), pair, truncation=False, verbose=False)["input_ids"]
        cut = sum(len(x) > limit for x in ids)
        if cut:
            log.warning("data: %d of %d %s rows are longer than max_length=%d tokens and were truncated", cut, len(ds), name, limit)


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
        saved = AutoConfig.from_pretrained(source, revision=model.revision, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as exc:  # missing model; custom code refused without trust_remote_code
        raise ConfigError(f"model.name_or_path: cannot load {model.name_or_path!r}: {str(exc).strip().splitlines()[0]}") from None
    head = sorted({k.rsplit(".", 1)[0] for k in info["missing_keys"]}) or ["classifier"]
    new_head.renew_head(net, _outermost(head), new_head.checkpoint_labels(saved), labels,
                        [*info["missing_keys"], *(m[0] for m in info.get("mismatched_keys", []))])
    return BuiltModel(net, describe_model(net, _outermost(head)), weight_files(source, model.revision),
                      BaseRef.pretrained(model.name_or_path, model.revision))


def describe_model(model: nn.Module, head: list[str] | None = None) -> ModelInfo:
    """Family = the config's model_type ("bert", "roberta", ...); blocks = the encoder layers.

    `head`: the new head's modules when the loader knows them (weights the checkpoint lacked, e.g. a missing
    pooler); otherwise every top-level module with weights outside the backbone.
    """
    family = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__.lower()
    return describe(model, family, head if head is not None else top_level_head(model), "text")


def _outermost(names: list[str]) -> list[str]:
    """Module names of the new head, without names nested inside another listed module."""
    return [n for n in names if not any(n != m and n.startswith(m + ".") for m in names)]


def metrics(data: DataConfig, labels: list[str] | None):
    if data.problem_type == label_utils.MULTI_LABEL:
        return MultiLabelMetrics(len(labels or []))
    extras = glue.TASKS[data.glue].metric_extras if data.glue else (("f1",) if labels is not None and len(labels) == 2 else ())
    return make_compute_metrics(regression=labels is None, extras=extras)


def main_metric(data: DataConfig, labels: list[str] | None) -> str:
    if data.glue:
        return glue.TASKS[data.glue].main_metric
    if data.problem_type == label_utils.MULTI_LABEL:
        return "mAP"  # threshold-free: the thresholds are tuned on the first eval split
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
