"""peft methods as strategies, table-driven the way peft's own tuners are: one row per method.

A row (`PeftMethod`) names the method, its peft `<Method>Config` class, option aliases, whether its
adapter merges into the base, and its default `target_modules` per model family (with a fallback per
modality for families not listed). From each row one Strategy class is generated and registered; its
typed `Config` is made from the peft config's own dataclass fields, so every peft option passes through
(checked by type, errors naming `strategy.<field>`). The task's new head goes to peft `modules_to_save`;
frozen BatchNorm stays in eval mode. Adding a method is one row in `METHODS` (plus its targets) and its tests.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from torch import nn

from sft_hub.errors import ConfigError, RunError
from sft_hub.strategies import register
from sft_hub.strategies.base import ModelInfo, keep_frozen_batchnorm_in_eval, options_of, saved_folder

Targets = str | list[str] | None  # peft `target_modules`: a list of names, a regex (full match), or None (peft's defaults)

# LoRA's default targets. Text: None, i.e. peft's own table by model_type (the attention projections of
# BERT-family models). Images (timm): the convs inside ResNet blocks and the block layers of ConvNeXt,
# EfficientNet and ViT; stems, downsample paths and depthwise convs stay frozen, the classifier is the new
# head (saved whole); other timm families: give `strategy.target_modules`.
TIMM_BLOCK_LAYERS = (r"timm_model\.(layer\d+\.\d+\.conv[123]"
                     r"|(stages\.\d+\.)?blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc[12])"
                     r"|blocks\.\d+\.\d+\.(conv_pw|conv_pwl|conv_exp|se\.conv_reduce|se\.conv_expand)|conv_head)")
# Audio: the attention projections (q/k/v_proj in wav2vec2, HuBERT, Whisper and AST in transformers 5;
# query/key/value in older BERT-style encoders). WavLM is the exception: its attention hands the
# projections' weights straight to F.multi_head_attention_forward and never calls the modules, so LoRA there
# would get no gradient at all (transformers#48773); for WavLM the feed-forward layers are adapted.
AUDIO_ATTENTION = r".*\.(q_proj|k_proj|v_proj|query|key|value)"
WAVLM_FEED_FORWARD = r"wavlm\..*\.feed_forward\.(intermediate_dense|output_dense)"
LORA_TARGETS: dict[str, Targets] = {
    "resnet": TIMM_BLOCK_LAYERS, "convnext": TIMM_BLOCK_LAYERS, "efficientnet": TIMM_BLOCK_LAYERS, "vit": TIMM_BLOCK_LAYERS,
    "wavlm": WAVLM_FEED_FORWARD,
    "text": None, "image": TIMM_BLOCK_LAYERS, "audio": AUDIO_ATTENTION,  # by modality, for families not listed
}
# peft config fields that sft-hub sets itself or that describe the saved adapter, not the method
MANAGED_FIELDS = {"task_type", "peft_type", "base_model_name_or_path", "revision", "auto_mapping", "peft_version"}


@dataclass(frozen=True)
class PeftMethod:
    name: str
    config: type[PeftConfig]
    targets: dict[str, Targets]  # family (or modality) -> default target_modules
    aliases: dict[str, str] = field(default_factory=dict)  # short option names -> peft field names
    merges: bool = True  # `merge_and_unload` folds the adapter into the base


METHODS = [
    PeftMethod("lora", LoraConfig, LORA_TARGETS, aliases={"alpha": "lora_alpha", "dropout": "lora_dropout"}),
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

    def validate(self: Any, where: str) -> None:
        options = options_of(self)
        for key, value in options.items():
            for pattern, ok, wanted in RANGE_CHECKS:
                if pattern.fullmatch(key) and isinstance(value, (int, float)) and not ok(value):
                    raise ConfigError(f"{where}.{key}: {wanted}, got {value!r}")
        try:  # peft's own checks, before any model is loaded
            method.config(**options)
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

        def to_dict(self) -> dict[str, Any]:
            return {"name": self.name, **options_of(self.config)}

        def default_targets(self, info: ModelInfo) -> Targets:
            return method.targets.get(info.family, method.targets.get(info.modality))

        def peft_config(self, info: ModelInfo) -> PeftConfig:
            options = options_of(self.config)
            options.setdefault("target_modules", self.default_targets(info))
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
                raise _error(exc, options_of(self.config) | {"target_modules": config.target_modules}) from None
            keep_frozen_batchnorm_in_eval(peft_model)
            return peft_model

        def param_groups(self, model: nn.Module, lr: float) -> list[dict] | None:
            return None

        def save(self, model: nn.Module, folder: Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
            target = Path(folder) / self.saved_as
            target.mkdir(parents=True, exist_ok=True)
            kwargs = {"state_dict": state_dict} if state_dict is not None else {}
            model.save_pretrained(target, safe_serialization=True, **kwargs)
            return target

        def load(self, base: nn.Module, folder: Path) -> nn.Module:
            target = saved_folder(self, folder)
            try:
                return PeftModel.from_pretrained(base, target, is_trainable=False)
            except Exception as exc:  # corrupt / missing adapter files
                raise RunError(f"{target}: cannot load adapter: {str(exc).splitlines()[0]}") from None

    PeftStrategy.__name__ = PeftStrategy.__qualname__ = f"{method.name.capitalize()}Strategy"
    return register(PeftStrategy)


STRATEGIES = {method.name: make_strategy(method) for method in METHODS}
