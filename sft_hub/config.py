"""Recipes: YAML loading, dotted command-line overrides, and validation into typed dataclasses.

A recipe has one section per concern (`task`, `model`, `data`, `strategy`, `training`). `model` and
`data` are parsed into the task's own dataclasses, `strategy` by `strategies.parse_strategy`, and
`training` is `transformers.TrainingArguments` verbatim. Every error names the field at fault and is
raised before any model or data is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sft_hub.errors import ConfigError

TOP_LEVEL_KEYS = ("task", "description", "model", "data", "strategy", "training", "engine", "metrics")


@dataclass
class EngineConfig:
    """How the engine guards a run (what Trainer itself has no argument for)."""

    nonfinite_loss: typing.Literal["error", "skip"] = "error"  # a NaN/inf loss stops the run, or is skipped
    max_nonfinite_skips: int = 10
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
    metrics: list[str] = field(default_factory=list)  # extra Hub `evaluate` metrics (online users)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # resolved YAML, written to the run dir

    @property
    def output_dir(self) -> Path:
        return Path(self.training["output_dir"])


def suggest(name: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown_key(where: str, key: str, options: typing.Iterable[str]) -> ConfigError:
    options = sorted(options)
    listing = ", ".join(options) if len(options) <= 12 else ", ".join(options[:12]) + f", ... ({len(options)} in all)"
    hint = suggest(key, options) or f" (known: {listing})"
    return ConfigError(f"{where}.{key}: unknown key{hint}" if where else f"{key}: unknown key{hint}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_type(value: Any, hint: Any, where: str) -> Any:
    """Return `value` checked (and int->float widened) against a type hint, or raise naming `where`."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return check_type(value, option, where)
            except ConfigError as exc:
                errors.append(exc)
        wanted = " or ".join(_type_name(a) for a in typing.get_args(hint))
        raise ConfigError(f"{where}: expected {wanted}, got {type(value).__name__} {value!r}")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        choices = ", ".join(repr(a) for a in typing.get_args(hint))
        raise ConfigError(f"{where}: {value!r} is not one of {choices}{suggest(str(value), map(str, typing.get_args(hint)))}")
    if origin in (list, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        key_t, val_t = typing.get_args(hint) or (Any, Any)
        return {check_type(k, key_t, f"{where}"): check_type(v, val_t, f"{where}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {hint.__name__}, got bool {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by field name."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            raise unknown_key(where, key, fields)
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = check_type(raw[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}.{name}: required field is missing")
    obj = cls(**values)
    if hasattr(obj, "validate"):
        obj.validate(where)
    return obj


def parse_value(text: str) -> Any:
    """Parse a command-line override value the way YAML would (3e-5 -> float, true -> bool, [a,b] -> list)."""
    value = yaml.safe_load(text) if text != "" else ""
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
        node[parts[-1]] = parse_value(text)
    return raw


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"recipe {path}:{at}: malformed YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path}: expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    return raw


def parse_recipe(raw: dict) -> Recipe:
    """Validate a raw recipe mapping into a `Recipe` (task, model, data, strategy and training checked)."""
    from sft_hub.strategies import parse_strategy
    from sft_hub.tasks import get_task
    from sft_hub.training_args import validate_training

    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise unknown_key("", key, TOP_LEVEL_KEYS)
    for key in ("task", "model", "data", "training"):
        if key not in raw:
            raise ConfigError(f"{key}: required section is missing")
    task_name = check_type(raw["task"], str, "task")
    task = get_task(task_name)
    recipe = Recipe(
        task=task_name,
        model=from_dict(task.ModelConfig, raw["model"], "model"),
        data=from_dict(task.DataConfig, raw["data"], "data"),
        strategy=parse_strategy(raw.get("strategy") or {"name": "full"}),
        training=validate_training(raw["training"]),
        description=check_type(raw.get("description", ""), str, "description"),
        engine=from_dict(EngineConfig, raw.get("engine"), "engine"),
        metrics=check_type(raw.get("metrics") or [], list[str], "metrics"),
        raw=raw,
    )
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    raw = apply_overrides(read_yaml(path), overrides or [])
    return parse_recipe(raw)
