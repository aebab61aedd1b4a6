"""The Task protocol: what a modality module provides to the engine (and nothing about strategies or devices).

A task is a plain module (see `text.py`, `image.py`, `audio.py`) with these names. The engine calls them
in this order: `load_data` -> `load_processor` -> `encode` -> `collator` -> `build_model` -> `metrics`.
A task never knows strategies: it describes its model (`describe_model` -> `ModelInfo`: family, blocks
bottom to top, head, final, embeddings) and the strategy decides what to train from that description.
Labels are normalised by `load_data`: every split has a `labels` column holding class ids (ints) or,
for regression, floats (for multi-label data, multi-hot float rows); `TaskData.labels` is the list of class
names, or None for regression.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from datasets import Dataset, DatasetDict
from torch import nn
from transformers import EvalPrediction, PreTrainedModel

from sft_hub.base_model import BaseRef
from sft_hub.model_info import ModelInfo


@dataclass
class TaskData:
    splits: DatasetDict  # raw rows with a `labels` column (test splits without labels are left out)
    train_split: str
    eval_splits: list[str]
    labels: list[str] | None  # class names in id order; None means regression (one output)
    info: dict[str, Any] = field(default_factory=dict)  # e.g. skipped files, counted into the manifest
    multi_label: bool = False  # `labels` columns hold multi-hot float rows (problem_type: multi_label_classification)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


@dataclass
class BuiltModel:
    model: PreTrainedModel
    info: ModelInfo  # the task's description of the model (`describe_model`), head included
    weight_files: list[Path]  # files the base weights were read from (fingerprinted); [] when built from scratch
    base: BaseRef  # what the weights came from

    @property
    def head_modules(self) -> list[str]:
        """The new head's module names (peft `modules_to_save`, the `head` strategy)."""
        return self.info.head


class Task(Protocol):
    ModelConfig: type  # may list `PATH_FIELDS`: local paths made absolute when a recipe is parsed
    DataConfig: type

    def load_data(self, data: Any, seed: int) -> TaskData: ...

    def load_processor(self, model: Any, saved: Path | None = None) -> Any: ...

    def save_processor(self, processor: Any, path: Path) -> None: ...

    def encode(self, splits: DatasetDict, processor: Any, data: Any, model: Any, train_split: str | None) -> DatasetDict: ...

    def collator(self, processor: Any, data: Any) -> Callable[[list[dict]], dict]: ...

    def build_model(self, model: Any, labels: list[str] | None) -> BuiltModel: ...

    def describe_model(self, model: nn.Module, head: list[str] | None = None) -> ModelInfo: ...

    def metrics(self, data: Any, labels: list[str] | None) -> Callable[[EvalPrediction], dict[str, float]]: ...

    def read_inputs(self, data: Any, values: list[str], file: Path | None) -> Dataset: ...

    def describe_input(self, row: dict) -> str: ...
