"""What to fine-tune: freezing, PEFT wrapping, and saving/loading exactly what a strategy learned.

Strategies (one entry each in `STRATEGIES`; add new ones here):
- `full`:  every parameter the task leaves trainable trains; the whole model is saved (`model/`).
- `head`:  the backbone is frozen, only the task's new head trains; the head is saved (`head/`).
- `lora`:  peft LoRA on the backbone (any `LoraConfig` field passes through), the new head in
           `modules_to_save`; the adapter folder is saved (`adapter/`).
In every strategy but `full`, BatchNorm layers whose parameters are frozen stay in eval mode, so their
running statistics never move and a saved adapter reloads to identical predictions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

from sft_hub.config import check_type, unknown_key
from sft_hub.errors import ConfigError, RunError

STRATEGIES = ("full", "head", "lora")
SAVED_AS = {"full": "model", "head": "head", "lora": "adapter"}
_LORA_FIELDS = {f.name for f in dataclasses.fields(LoraConfig) if f.init} - {"task_type", "peft_type", "base_model_name_or_path", "revision"}
_LORA_ALIASES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}
HEAD_FILE = "head.safetensors"


@dataclass
class StrategyConfig:
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def saved_as(self) -> str:
        return SAVED_AS[self.name]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


def parse_strategy(raw: Any) -> StrategyConfig:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"strategy: expected a mapping with a name, got {raw!r}")
    raw = dict(raw)
    name = check_type(raw.pop("name", "full"), str, "strategy.name")
    if name not in STRATEGIES:
        raise ConfigError(f"strategy.name: unknown strategy '{name}' (known: {', '.join(STRATEGIES)})")
    if name in ("full", "head") and raw:
        raise unknown_key("strategy", next(iter(raw)), ["name"])
    options = {}
    for key, value in raw.items():
        key = _LORA_ALIASES.get(key, key)
        if key not in _LORA_FIELDS:
            raise unknown_key("strategy", key, sorted(_LORA_FIELDS | set(_LORA_ALIASES)))
        options[key] = value
    if name == "lora":
        for key in ("r", "lora_alpha"):
            if key in options and (not isinstance(options[key], (int, float)) or options[key] <= 0):
                raise ConfigError(f"strategy.{key}: must be a positive number, got {options[key]!r}")
        dropout = options.get("lora_dropout", 0.0)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise ConfigError(f"strategy.lora_dropout: must be a number in [0, 1), got {dropout!r}")
    return StrategyConfig(name=name, options=options)


def _keep_frozen_batchnorm_in_eval(model: nn.Module) -> None:
    """Frozen BN must not update running stats when Trainer calls model.train(): pin it to eval mode."""

    def pin_eval(module: nn.Module, _args: tuple) -> None:
        module.training = False

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.register_forward_pre_hook(pin_eval)
                module.eval()


def apply_strategy(model: nn.Module, strategy: StrategyConfig, head_modules: list[str], lora_targets: Any) -> nn.Module:
    """Freeze / wrap `model` for the strategy; returns the model the Trainer trains."""
    if strategy.name == "full":  # everything the task left trainable (a task may freeze e.g. an audio feature encoder)
        return model
    if strategy.name == "head":
        model.requires_grad_(False)
        for name in head_modules:
            model.get_submodule(name).requires_grad_(True)
        _keep_frozen_batchnorm_in_eval(model)
        return model
    options = dict(strategy.options)
    options.setdefault("target_modules", lora_targets)
    options["modules_to_save"] = sorted(set(options.get("modules_to_save") or []) | set(head_modules))
    try:
        config = LoraConfig(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"strategy: {str(exc).splitlines()[0]}") from None
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:  # peft's LoRA layers check the dropout here too: blame what the message names
        message = str(exc).splitlines()[0]
        field = "lora_dropout" if "dropout" in message.lower() else "target_modules"
        raise ConfigError(f"strategy.{field}: {message}") from None
    _keep_frozen_batchnorm_in_eval(peft_model)
    return peft_model


def frozen_params(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if not p.requires_grad]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def save_learned(model: nn.Module, strategy: StrategyConfig, out: Path) -> Path:
    """Write what the strategy learned (safetensors only) into `out/<adapter|head|model>`."""
    target = out / strategy.saved_as
    target.mkdir(parents=True, exist_ok=True)
    if strategy.name == "lora":
        model.save_pretrained(target, safe_serialization=True)
    elif strategy.name == "head":
        save_file(trainable_state(model), str(target / HEAD_FILE))
    else:
        model.save_pretrained(target, safe_serialization=True)
    return target


def load_learned(base: nn.Module, strategy: StrategyConfig, run_dir: Path) -> nn.Module:
    """Put what a run learned onto a freshly built base (adapter or head); `full` runs load elsewhere."""
    folder = run_dir / strategy.saved_as
    if not folder.is_dir():
        raise RunError(f"{folder}: missing; the run has no saved {strategy.saved_as}")
    if strategy.name == "lora":
        check_adapter_folder(folder)
        try:
            return PeftModel.from_pretrained(base, folder, is_trainable=False)
        except Exception as exc:  # corrupt / missing adapter files
            raise RunError(f"{folder}: cannot load adapter: {str(exc).splitlines()[0]}") from None
    if strategy.name == "head":
        try:
            state = load_file(str(folder / HEAD_FILE))
        except Exception as exc:
            raise RunError(f"{folder / HEAD_FILE}: cannot read head weights: {str(exc).splitlines()[0]}") from None
        missing = [k for k in state if k not in dict(base.named_parameters())]
        if missing:
            raise RunError(f"{folder / HEAD_FILE}: weights for {missing[0]} do not fit the base model")
        base.load_state_dict(state, strict=False)
        return base
    raise RunError(f"strategy {strategy.name}: loads as a full model from {folder}")


def check_adapter_folder(folder: Path) -> None:
    """Name a missing adapter file (peft would report it as "Repo id must be a string")."""
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (folder / name).is_file():
            raise RunError(f"{folder / name}: missing; the adapter in {folder} is incomplete (copy it again, or train again)")
