"""Is this run meaningful? Checks that run before any model loads (and one right after the model is built).

A run that finishes must be a trained run: a positive, finite learning rate; a positive amount of
training (`num_train_epochs > 0` or `max_steps > 0`; a negative `max_steps` is an error, not "use the
epochs"); a classifier with at least two classes; options whose effect sft-hub would silently drop
refused by name. Each error names the recipe field (or the data file and row) at fault.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sft_hub.errors import ConfigError, DataError


def check_recipe(recipe: Any) -> None:
    """Recipe-only checks (no data, no model): the training settings make a real run."""
    name = getattr(recipe.model, "name_or_path", None)
    if isinstance(name, str) and not name.strip():
        raise ConfigError("model.name_or_path: empty; give a Hub id, a local model folder or an architecture name")
    training = recipe.training
    lr = training.get("learning_rate", 5e-5)
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"training.learning_rate: must be a finite number > 0, got {lr!r}")
    epochs, steps = training.get("num_train_epochs", 3.0), training.get("max_steps", -1)
    if not math.isfinite(epochs):
        raise ConfigError(f"training.num_train_epochs: must be a finite number, got {epochs!r}")
    if steps is not None and steps < -1 or steps == 0:
        raise ConfigError(f"training.max_steps: must be > 0 (or left out to train num_train_epochs), got {steps}")
    if (steps is None or steps < 0) and epochs <= 0:
        raise ConfigError(f"training.num_train_epochs: {epochs:g} trains nothing; give num_train_epochs > 0 or max_steps > 0")
    smoothing = training.get("label_smoothing_factor", 0.0)
    if not 0 <= smoothing < 1:
        raise ConfigError(f"training.label_smoothing_factor: must be in [0, 1), got {smoothing}")
    if training.get("load_best_model_at_end") and "no" in (training.get("eval_strategy", "no"), training.get("save_strategy", "steps")):
        raise ConfigError("training.load_best_model_at_end: needs training.eval_strategy and training.save_strategy "
                          "(steps or epoch), or there is no best checkpoint to load")
    _check_early_stopping(recipe)


def _check_early_stopping(recipe: Any) -> None:
    engine, training = recipe.engine, recipe.training
    if engine.early_stopping_patience is None:
        if engine.early_stopping_threshold:
            raise ConfigError("engine.early_stopping_threshold: only used with engine.early_stopping_patience")
        return
    if engine.early_stopping_patience < 1:
        raise ConfigError(f"engine.early_stopping_patience: must be >= 1, got {engine.early_stopping_patience}")
    if engine.early_stopping_threshold < 0:
        raise ConfigError(f"engine.early_stopping_threshold: must be >= 0, got {engine.early_stopping_threshold}")
    if not training.get("load_best_model_at_end"):
        raise ConfigError("engine.early_stopping_patience: needs training.load_best_model_at_end: true "
                          "(so the saved model is the best one, not the one after the last patience evaluations)")
    if training.get("eval_strategy", "no") in ("no", None):
        raise ConfigError("engine.early_stopping_patience: needs training.eval_strategy (steps or epoch)")


def check_data(recipe: Any, data: Any) -> None:
    """Checks on the loaded data (still before any model loads)."""
    if data.labels is not None and len(data.labels) < 2:
        found = f"only {data.labels[0]!r}" if data.labels else "none"
        raise DataError(f"data.label_column: the training split {data.train_split!r} has one class ({found}); "
                        "a classifier needs at least two")
    if data.labels is None and recipe.training.get("label_smoothing_factor"):
        raise ConfigError("training.label_smoothing_factor: only for classification; this data is regression (one output)")


def check_model_source(recipe: Any) -> None:
    """A model path that does not exist is named as a missing folder (not as a malformed Hub repo id)."""
    name = getattr(recipe.model, "name_or_path", None)
    if isinstance(name, str) and name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise ConfigError(f"model.name_or_path: folder {name} not found")


def check_model(recipe: Any, model: Any) -> None:
    """Checks against the built model's config, before training: inputs longer than the model can take."""
    max_length = getattr(recipe.data, "max_length", None)
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if max_length is None or not isinstance(limit, int):
        return
    # RoBERTa-family position ids start after the padding index, so two positions are never usable
    usable = limit - 2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer") else limit
    if max_length > usable:
        raise ConfigError(f"data.max_length: {max_length} is above what {recipe.model.name_or_path} takes "
                          f"({usable} tokens, max_position_embeddings={limit}); set data.max_length <= {usable}")
