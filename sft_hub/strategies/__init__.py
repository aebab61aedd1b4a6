"""What to fine-tune: the strategy registry.

Each module of this package (besides `base`) defines strategy classes and registers them with
`@register`; every module is imported here, so adding a strategy is one new module (and its tests).
`parse_strategy` turns a recipe's `strategy:` section into a validated instance; errors name the field
(`strategy.<field>`).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

from sft_hub.errors import ConfigError
from sft_hub.schema import check_type, from_dict, suggest, unknown_key
from sft_hub.strategies.base import (  # noqa: F401  (the shared helpers, importable from the package)
    FitInputs,
    ModelInfo,
    Strategy,
    count_parameters,
    freeze,
    frozen_params,
    keep_frozen_batchnorm_in_eval,
    saves_whole_model,
    trainable_state,
)

_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make `cls` (a Strategy) available under `cls.name`."""
    for attr in ("name", "Config", "saved_as", "merges", "needs_training_loop"):
        if not hasattr(cls, attr):
            raise TypeError(f"strategy {cls.__name__}: missing class attribute {attr!r}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"strategy {cls.name!r}: registered twice ({_REGISTRY[cls.name].__name__}, {cls.__name__})")
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type:
    """The strategy class registered as `name` (ConfigError naming `strategy.name` otherwise)."""
    if name not in _REGISTRY:
        hint = suggest(name, _REGISTRY) or f" (known: {', '.join(sorted(_REGISTRY))})"
        raise ConfigError(f"strategy.name: unknown strategy '{name}'{hint}")
    return _REGISTRY[name]


def available() -> list[type]:
    """Every registered strategy class, by name."""
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def parse_strategy(raw: Any) -> Strategy:
    """A recipe's `strategy:` (a name, or a mapping with `name` and options) -> a validated Strategy instance."""
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"strategy: expected a mapping with a name, got {raw!r}")
    options = dict(raw)
    cls = get(check_type(options.pop("name", "full"), str, "strategy.name"))
    aliases = getattr(cls, "aliases", {})
    canonical: dict[str, Any] = {}
    for key, value in options.items():
        key = aliases.get(key, key)
        if key in canonical:
            raise ConfigError(f"strategy.{key}: given twice (once through an alias)")
        canonical[key] = value
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    for key in canonical:
        if key not in fields:  # `name` and the aliases are valid spellings too, so suggest among them
            raise unknown_key("strategy", key, fields | {"name"} | set(aliases))
    return cls(from_dict(cls.Config, canonical, "strategy"))


for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
