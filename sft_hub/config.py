"""Recipes: YAML loading, dotted command-line overrides, and validation into typed dataclasses.

A recipe has one section per concern (`task`, `model`, `data`, `strategy`, `training`). `model` and
`data` are parsed into the task's own dataclasses, `strategy` by `strategies.parse_strategy`, and
`training` is `transformers.TrainingArguments` verbatim. Every error names the field at fault and is
raised before any model or data is loaded.
"""

from __future__ import annotations

import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sft_hub.errors import ConfigError
from sft_hub.schema import check_type, from_dict, suggest, unknown_key  # noqa: F401  (re-exported: recipes' validation API)
from sft_hub.strategies import parse_strategy
from sft_hub.tasks import get_task
from sft_hub.training_args import validate_training

TOP_LEVEL_KEYS = ("task", "description", "model", "data", "strategy", "training", "engine")


@dataclass
class EngineConfig:
    """How the engine guards a run (what Trainer itself has no argument for)."""

    nonfinite_loss: typing.Literal["error", "skip"] = "error"  # a NaN/inf loss stops the run, or is skipped
    max_nonfinite_skips: int = 10
    early_stopping_patience: int | None = None  # stop after this many evaluations without improvement (EarlyStoppingCallback)
    early_stopping_threshold: float = 0.0  # how much `metric_for_best_model` must improve to count
    report: bool = True  # write <run>/report (curves, confusion matrix, per-class table, worst mistakes) at the end
    ema: Any = None  # EMA of weights: {decay: 0.999, warmup: false} (sft_hub/ema.py EmaConfig); evaluated and saved instead

    def validate(self, where: str) -> None:
        if self.ema is not None:
            from sft_hub.ema import EmaConfig

            self.ema = from_dict(EmaConfig, self.ema, f"{where}.ema")


@dataclass
class Recipe:
    task: str
    model: Any
    data: Any
    strategy: Any
    training: dict[str, Any]
    description: str = ""
    engine: EngineConfig = field(default_factory=EngineConfig)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # resolved YAML, written to the run dir

    @property
    def output_dir(self) -> Path:
        return Path(self.training["output_dir"])


def parse_value(text: str, key: str | None = None) -> Any:
    """Parse a command-line override value the way YAML would (3e-5 -> float, true -> bool, [a,b] -> list).

    Text that is not YAML (a glob such as `[0-9]_*.wav` reads as a list followed by junk) is an error naming
    the override `key`, with the quoting that passes it as a string, rather than a parser traceback."""
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        assignment = f"{key}=\"{text}\"" if key else f"\"{text}\""
        raise ConfigError(f"{f'override {key}' if key else 'value'}: {text!r} is not a YAML value ({problem}); "
                          f"to pass it as a string, quote it inside the argument: '{assignment}'") from None
    if isinstance(value, str):  # YAML reads 3e-5 as a string (no dot); numbers are what users mean
        try:
            return float(value) if any(c in value.lower() for c in ".e") and not value.isalpha() else value
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value, e.g. training.learning_rate=3e-5")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = parse_value(text, key.strip())
    return raw


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe {path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"recipe {path}:{at}: malformed YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path}: expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    return raw


def parse_recipe(raw: dict, validate: bool = True) -> Recipe:
    """Validate a raw recipe mapping into a `Recipe` (task, model, data, strategy and training checked).

    Local paths in the model and data sections (the fields a task lists in `PATH_FIELDS`) are made absolute
    in `raw`, so the recipe a run stores still finds its files from any working directory.
    `validate=False` (re-reading a run's recipe) keeps the type checks but skips the sections' own
    `validate` hooks: a run dir predicts and exports without its training data present.
    """
    if "metrics" in raw:  # older recipes: the list was never used; metrics are the task's own (see README)
        raise ConfigError("metrics: not supported; each task computes its own metrics offline (see the README), remove this key")
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise unknown_key("", key, TOP_LEVEL_KEYS)
    for key in ("task", "model", "data", "training"):
        if key not in raw:
            raise ConfigError(f"{key}: required section is missing")
    task_name = check_type(raw["task"], str, "task")
    task = get_task(task_name)
    sections = {}
    for section, cls in (("model", task.ModelConfig), ("data", task.DataConfig)):
        sections[section] = from_dict(cls, raw[section], section, validate)  # errors show paths as the user wrote them
        absolute = absolute_paths(raw[section], getattr(cls, "PATH_FIELDS", ()))
        if absolute != raw[section]:
            raw[section] = absolute
            sections[section] = from_dict(cls, absolute, section, validate=False)
    return Recipe(
        task=task_name,
        model=sections["model"],
        data=sections["data"],
        strategy=parse_strategy(raw.get("strategy") or {"name": "full"}),
        training=validate_training(raw["training"]),
        description=check_type(raw.get("description", ""), str, "description"),
        engine=from_dict(EngineConfig, raw.get("engine"), "engine"),
        raw=raw,
    )


def absolute_paths(section: Any, fields: typing.Iterable[str]) -> Any:
    """`section` with each relative path in `fields` (a string, or a mapping of strings) that exists made absolute."""
    if not isinstance(section, dict):
        return section

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not os.path.isabs(value) and os.path.exists(value):
            return os.path.abspath(value)
        return value

    out = dict(section)
    for name in fields:
        if name in out:
            value = out[name]
            out[name] = {k: fix(v) for k, v in value.items()} if isinstance(value, dict) else fix(value)
    return out


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    raw = apply_overrides(read_yaml(path), overrides or [])
    return parse_recipe(raw)
