"""Typed validation shared by every config section: type checks against hints, unknown keys, dataclasses from mappings.

The leaf every config-owning module imports (config, training_args, strategies, tasks), so none of them
imports another to validate.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from sft_hub.errors import ConfigError


def suggest(name: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown_key(where: str, key: str, options: typing.Iterable[str]) -> ConfigError:
    options = sorted(options)
    listing = ", ".join(options) if len(options) <= 12 else ", ".join(options[:12]) + f", ... ({len(options)} in all)"
    hint = suggest(key, options) or f" (known: {listing})"
    return ConfigError(f"{where}.{key}: unknown key{hint}" if where else f"{key}: unknown key{hint}")


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:  # `bool | Literal["auto"]` reads "bool or 'auto'"
        return " or ".join(repr(a) for a in typing.get_args(hint))
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


def from_dict(cls: type, raw: Any, where: str, validate: bool = True) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by field name.

    `validate=False` skips the dataclass's own `validate` hook (its cross-field and file checks): used when
    re-reading a section that was validated when the run was trained.
    """
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
    if validate and hasattr(obj, "validate"):
        obj.validate(where)
    return obj
