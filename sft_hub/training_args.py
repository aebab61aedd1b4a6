"""The recipe's `training:` section: `transformers.TrainingArguments` verbatim, checked by field name.

sft-hub fills in the defaults its run-directory contract needs (checkpoints under `<run>/checkpoints`,
`label_names`, no Hub push from the Trainer, no reporting integrations unless asked) and leaves every
other argument to the user.
"""

from __future__ import annotations

import dataclasses
import typing
from enum import Enum
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from sft_hub.schema import check_type, unknown_key
from sft_hub.errors import ConfigError
from sft_hub.report import tensorboard

_FIELDS = {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}
_HINTS = typing.get_type_hints(TrainingArguments)
_NON_NEGATIVE = ("learning_rate", "weight_decay", "warmup_steps", "max_grad_norm", "num_train_epochs")
_POSITIVE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")
# Arguments whose job sft-hub does itself (push: `sft-hub push`, never a token in a run dir).
_MANAGED = {"push_to_hub": "use `sft-hub push RUN_DIR` after training", "hub_token": "log in with `hf auth login` instead"}


def _simple(hint: Any) -> bool:
    """True for hints we can check ourselves (bool/int/float/str, optionally | None)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return all(a in (bool, int, float, str) for a in args)


def _translate_renamed(raw: dict[str, Any]) -> dict[str, Any]:
    """Accept the transformers 4.x spellings that recipes in the wild still use."""
    raw = dict(raw)
    if raw.pop("group_by_length", False):
        raw.setdefault("train_sampling_strategy", "group_by_length")
    if "warmup_ratio" in raw:
        raw.setdefault("warmup_steps", float(raw.pop("warmup_ratio")))
    for key, value in raw.items():  # YAML 1.1 reads a bare `no` as false: `save_strategy: no` means "no"
        if key.endswith("_strategy") and value is False:
            raw[key] = "no"
    return raw


def validate_training(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"training: expected a mapping of TrainingArguments, got {raw!r}")
    out: dict[str, Any] = {}
    for key, value in _translate_renamed(raw).items():
        if key not in _FIELDS:
            raise unknown_key("training", key, _FIELDS)
        if key in _MANAGED and value:
            raise ConfigError(f"training.{key}: not allowed in a recipe; {_MANAGED[key]}")
        hint = _HINTS.get(key, Any)
        out[key] = check_type(value, hint, f"training.{key}") if _simple(hint) else value
    if not out.get("output_dir"):
        raise ConfigError("training.output_dir: required (the run directory)")
    if tensorboard.wants_tensorboard(out.get("report_to")) and not tensorboard.installed():
        raise ConfigError("training.report_to: tensorboard is not installed; pip install 'sft-hub[tensorboard]' (scripts/setup.sh installs it)")
    for key in _NON_NEGATIVE:
        if key in out and out[key] is not None and out[key] < 0:
            raise ConfigError(f"training.{key}: must be >= 0, got {out[key]}")
    for key in _POSITIVE:
        if key in out and out[key] is not None and out[key] < 1:
            raise ConfigError(f"training.{key}: must be >= 1, got {out[key]}")
    return out


def build_training_args(training: dict[str, Any], run_dir: Path, **defaults: Any) -> TrainingArguments:
    """TrainingArguments for a run: the recipe's values over sft-hub's defaults."""
    kwargs = {
        "report_to": "none",
        "label_names": ["labels"],
        "save_safetensors": True,
        "logging_strategy": "steps",
        "logging_steps": 10,
        "disable_tqdm": None,
        "use_cpu": not _has_accelerator(),  # lets bf16 autocast run on CPU-only machines
        **{k: v for k, v in defaults.items()},
        **training,
    }
    kwargs = {k: v for k, v in kwargs.items() if k in _FIELDS}
    if not kwargs.get("dataloader_num_workers"):  # persistent workers need workers; a CPU override to 0 must not fail
        kwargs["dataloader_persistent_workers"] = False
    kwargs["output_dir"] = str(run_dir / "checkpoints")
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"training: {str(exc).splitlines()[0]}") from None


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or torch.backends.mps.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
