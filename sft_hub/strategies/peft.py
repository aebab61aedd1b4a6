"""peft methods as strategies, table-driven the way peft's own tuners are: one row per method.

A row (`PeftMethod`) names the method, its peft `<Method>Config` class, option aliases, whether its
adapter merges into the base, its default options per model family (`target_modules`, and IA3's
`feedforward_modules`; a fallback per modality for families not listed; peft_targets.py), the families it
cannot adapt and why, and any Trainer callbacks it needs (AdaLoRA's rank budget). From each row one
Strategy class is generated and registered; its typed `Config` is made from the peft config's own dataclass
fields, so every peft option passes through (checked by type, errors naming `strategy.<field>`), plus
`head_lr` (the new head's own learning rate). The task's new head goes to peft `modules_to_save`; frozen
BatchNorm stays in eval mode. Adding a method is one row in `METHODS` (plus its defaults) and its tests.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from peft import AdaLoraConfig, BOFTConfig, IA3Config, LoHaConfig, LoKrConfig, LoraConfig, OFTConfig, PeftConfig, PeftModel, VeraConfig, get_peft_model
from torch import nn

from sft_hub import lora_fast
from sft_hub.errors import ConfigError, RunError
from sft_hub.strategies import register
from sft_hub.strategies.adalora_budget import AdaLoraBudget
from sft_hub.strategies.base import ModelInfo, keep_frozen_batchnorm_in_eval, options_of, saved_folder
from sft_hub.strategies.param_groups import build_groups, check_rates
from sft_hub.strategies.peft_targets import ADAPT_LINEAR, ADAPT_LINEAR_AND_CONV, IA3_DEFAULTS, UNSUPPORTED, defaults_for

# peft config fields that sft-hub sets itself or that describe the saved adapter, not the method
MANAGED_FIELDS = {"task_type", "peft_type", "base_model_name_or_path", "revision", "auto_mapping", "peft_version"}
EXTRA_FIELDS = [("head_lr", float | None, field(default=None))]  # sft-hub's own options, not passed to peft
EXTRA_NAMES = {name for name, _, _ in EXTRA_FIELDS}
ADALORA_STEPS = 10**9  # stands in for AdaLoRA's `total_step` until the Trainer knows the run's steps (adalora_budget.py)


@dataclass(frozen=True)
class PeftMethod:
    name: str
    config: type[PeftConfig]
    defaults: dict[str, dict[str, Any]]  # family (or modality) -> default options (target_modules, ...)
    aliases: dict[str, str] = field(default_factory=dict)  # short option names -> peft field names
    merges: bool = True  # `merge_and_unload` folds the adapter into the base
    unsupported: dict[str, str] = field(default_factory=dict)  # family -> why the method cannot adapt it
    stand_ins: dict[str, Any] = field(default_factory=dict)  # required peft fields filled at train start
    callbacks: Callable[..., list] | None = None  # (peft model, options, resume_from) -> Trainer callbacks


def _adalora_callbacks(model: nn.Module, options: dict[str, Any], resume_from: Path | None) -> list:
    return [AdaLoraBudget(model, "total_step" in options, resume_from)]


LORA_ALIASES = {"alpha": "lora_alpha", "dropout": "lora_dropout"}
METHODS = [
    PeftMethod("lora", LoraConfig, ADAPT_LINEAR_AND_CONV, aliases=LORA_ALIASES),
    PeftMethod("adalora", AdaLoraConfig, ADAPT_LINEAR_AND_CONV, aliases=LORA_ALIASES, stand_ins={"total_step": ADALORA_STEPS},
               callbacks=_adalora_callbacks),
    PeftMethod("ia3", IA3Config, IA3_DEFAULTS),
    PeftMethod("loha", LoHaConfig, ADAPT_LINEAR_AND_CONV),
    PeftMethod("lokr", LoKrConfig, ADAPT_LINEAR_AND_CONV),
    PeftMethod("vera", VeraConfig, ADAPT_LINEAR, unsupported=UNSUPPORTED["vera"]),
    PeftMethod("oft", OFTConfig, ADAPT_LINEAR, unsupported=UNSUPPORTED["oft"]),
    PeftMethod("boft", BOFTConfig, ADAPT_LINEAR_AND_CONV),
]


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _probability(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


# Range checks by field name, for every method (peft itself finds most of these only when wrapping a model).
RANGE_CHECKS: list[tuple[re.Pattern, Callable[[Any], bool], str]] = [
    (re.compile(r"r|.*_r|.*_alpha|alpha"), _positive, "must be a positive number"),
    (re.compile(r"(.*_)?dropout"), _probability, "must be a probability between 0 and 1"),
]


def field_named(message: str, options: dict[str, Any]) -> str | None:
    """The option a peft error message is about: named in full, else by its last word (`dropout`)."""
    for key in sorted(options, key=len, reverse=True):
        if re.search(rf"\b{re.escape(key)}\b", message):
            return key
    if "target" in message.lower():
        return "target_modules"
    for key in options:
        if re.search(rf"\b{re.escape(key.rsplit('_', 1)[-1])}\b", message, re.IGNORECASE):
            return key
    return None


def _error(exc: Exception, options: dict[str, Any]) -> ConfigError:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    key = field_named(message, options)
    return ConfigError(f"strategy.{key}: {message}" if key else f"strategy: {message}")


def _options_class(method: PeftMethod) -> type:
    """A dataclass with the peft config's own fields, types and defaults (minus MANAGED_FIELDS)."""
    hints = typing.get_type_hints(method.config)
    fields = []
    for f in dataclasses.fields(method.config):
        if not f.init or f.name in MANAGED_FIELDS:
            continue
        default = field(default=f.default) if f.default is not dataclasses.MISSING else field(default_factory=f.default_factory)
        fields.append((f.name, hints[f.name], default))
    fields.extend(EXTRA_FIELDS)

    def validate(self: Any, where: str) -> None:
        options = options_of(self)
        check_rates(None, options.pop("head_lr", None), where)
        for key, value in options.items():
            for pattern, ok, wanted in RANGE_CHECKS:
                if pattern.fullmatch(key) and isinstance(value, (int, float)) and not ok(value):
                    raise ConfigError(f"{where}.{key}: {wanted}, got {value!r}")
        try:  # peft's own checks, before any model is loaded
            method.config(**(method.stand_ins | options))
        except (TypeError, ValueError) as exc:
            raise _error(exc, options) from None

    return dataclasses.make_dataclass(f"{method.name.capitalize()}Options", fields, namespace={"validate": validate})


def make_strategy(method: PeftMethod) -> type:
    """The Strategy class of one peft method (saved as `<run>/adapter`)."""

    class PeftStrategy:
        name: ClassVar[str] = method.name
        Config: ClassVar[type] = _options_class(method)
        aliases: ClassVar[dict[str, str]] = dict(method.aliases)
        saved_as: ClassVar[str] = "adapter"
        merges: ClassVar[bool] = method.merges
        needs_training_loop: ClassVar[bool] = True
        peft_method: ClassVar[PeftMethod] = method

        def __init__(self, config: Any = None) -> None:
            self.config = config if config is not None else self.Config()
            self.info: ModelInfo | None = None  # the applied model's description (for head_lr's groups)

        def to_dict(self) -> dict[str, Any]:
            return {"name": self.name, **options_of(self.config)}

        def peft_options(self) -> dict[str, Any]:
            return {k: v for k, v in options_of(self.config).items() if k not in EXTRA_NAMES}

        def peft_config(self, info: ModelInfo) -> PeftConfig:
            if info.family in method.unsupported:
                raise ConfigError(f"strategy.name: {method.name} cannot adapt this {info.family} model: "
                                  f"{method.unsupported[info.family]}; use lora, loha, lokr, ia3, adalora or boft")
            options = method.stand_ins | defaults_for(method.defaults, info.family, info.modality) | self.peft_options()
            options["modules_to_save"] = sorted(set(options.get("modules_to_save") or []) | set(info.head))
            try:
                return method.config(**options)
            except (TypeError, ValueError) as exc:
                raise _error(exc, options) from None

        def apply(self, model: nn.Module, info: ModelInfo) -> nn.Module:
            config = self.peft_config(info)
            try:
                peft_model = get_peft_model(model, config)
            except ValueError as exc:
                raise _error(exc, self.peft_options() | {"target_modules": config.target_modules}) from None
            if self.config_value("boft_n_butterfly_factor", 1) > 1 and not any(
                    getattr(m, "fbd_cuda_available", True) for m in peft_model.modules() if hasattr(m, "boft_R")):
                # peft falls back to a factor of 1 (and only warns) when its CUDA extension cannot be built
                raise ConfigError("strategy.boft_n_butterfly_factor: needs peft's BOFT CUDA extension, which could not be "
                                  "built here; use 1 (the default)")
            keep_frozen_batchnorm_in_eval(peft_model)
            lora_fast.install(peft_model)  # plain LoRA Linears: same numbers, less memory (other methods untouched)
            self.info = info
            return peft_model

        def config_value(self, key: str, default: Any) -> Any:
            return getattr(self.config, key, default)

        def param_groups(self, model: nn.Module, lr: float) -> list[dict] | None:
            if self.config.head_lr is None or self.info is None:
                return None
            return build_groups(model, self.info, lr, head_lr=self.config.head_lr)

        def callbacks(self, model: nn.Module, resume_from: Path | None = None) -> list:
            return method.callbacks(model, self.peft_options(), resume_from) if method.callbacks else []

        def save(self, model: nn.Module, folder: Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
            target = Path(folder) / self.saved_as
            target.mkdir(parents=True, exist_ok=True)
            kwargs = {"state_dict": state_dict} if state_dict is not None else {}
            model.save_pretrained(target, safe_serialization=True, **kwargs)
            return target

        def load(self, base: nn.Module, folder: Path) -> nn.Module:
            target = saved_folder(self, folder)
            check_adapter_folder(target)
            try:
                return PeftModel.from_pretrained(base, target, is_trainable=False)
            except Exception as exc:  # corrupt / missing adapter files
                raise RunError(f"{target}: cannot load adapter: {str(exc).splitlines()[0]}") from None

    PeftStrategy.__name__ = PeftStrategy.__qualname__ = f"{method.name.capitalize()}Strategy"
    return register(PeftStrategy)


STRATEGIES = {method.name: make_strategy(method) for method in METHODS}


def check_adapter_folder(folder: Path) -> None:
    """Name a missing adapter file (peft would report it as "Repo id must be a string")."""
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (folder / name).is_file():
            raise RunError(f"{folder / name}: missing; the adapter in {folder} is incomplete (copy it again, or train again)")
