"""`sft-hub select`'s command-line specs: `--models`, `--strategies`, `--budget`, and the time-budget callback.

Strategy specs (comma-separated in `--strategies`):
```
lora                      a registered strategy with its defaults
partial:2                 `name:ARG` sets the strategy's main option: its `positional` class attribute, else
                          `n` (partial's blocks) or `r` (a peft rank), else its first option
lora:r=16:alpha=32        `name:key=value[:key=value]`
lora.r=16.alpha=32        the same, dotted like a recipe override (strategy.r=16)
```
Every spec is validated by the strategy registry before anything loads or trains; a name that is not
registered in this installation is one error naming all such names and the ones that are.
Budgets: `200steps` (`training.max_steps`), `5min` / `90s` (a callback stops training at that wall time,
rank 0's clock decides for every rank), `2epochs` (`training.num_train_epochs`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback

from sft_hub.config import parse_value
from sft_hub.errors import ConfigError
from sft_hub.schema import suggest

_DOTTED_OPTION = re.compile(r"\.(?=[A-Za-z_]\w*=)")  # a dot starting `key=` (not the dot of 1.5e-3)
_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(steps?|epochs?|min|m|s|sec|h)\s*$")


def split_list(raw: str, flag: str) -> list[str]:
    items = [part.strip() for part in raw.split(",")]
    if not raw.strip() or any(not item for item in items):
        raise ConfigError(f"{flag}: give a comma-separated list without empty entries, got {raw!r}")
    dupes = sorted({i for i in items if items.count(i) > 1})
    if dupes:
        raise ConfigError(f"{flag}: {', '.join(dupes)} listed twice")
    return items


def positional_option(cls: type, spec: str) -> str:
    """The option `name:ARG` sets: the class's `positional` attribute, else `n` (partial) or `r` (peft ranks), else the first."""
    fields = [f.name for f in dataclasses.fields(cls.Config)]
    if not fields:
        raise ConfigError(f"--strategies: {spec!r}: strategy {cls.name} has no options")
    named = getattr(cls, "positional", None)
    return named if named in fields else next((f for f in ("n", "r") if f in fields), fields[0])


def strategy_mapping(spec: str) -> dict[str, Any]:
    """One `--strategies` entry -> a recipe `strategy:` mapping (validated later by the registry)."""
    from sft_hub import strategies

    head, *rest = spec.split(":")
    name, *dotted = _DOTTED_OPTION.split(head)
    items = dotted + rest
    out: dict[str, Any] = {"name": name.strip()}
    for i, item in enumerate(items):
        if "=" in item:
            key, text = item.split("=", 1)
            out[key.strip()] = parse_value(text.strip())
        elif i == 0 and not dotted:  # positional: the strategy's first option
            cls = strategies.get(out["name"])
            out[positional_option(cls, spec)] = parse_value(item.strip())
        else:
            raise ConfigError(f"--strategies: {spec!r}: expected key=value after the first ':', got {item!r}")
    return out


def parse_strategies(raw: str, flag: str = "--strategies") -> list[tuple[str, Any]]:
    """`--strategies` -> [(the spec as written, validated Strategy instance)]; one error for every unknown name."""
    from sft_hub import strategies

    specs = split_list(raw, flag)
    known = {cls.name for cls in strategies.available()}
    names = [_DOTTED_OPTION.split(s.split(":")[0])[0].strip() for s in specs]
    unknown = [n for n in names if n not in known]
    if unknown:
        hints = "".join(suggest(n, known) for n in unknown[:1])
        raise ConfigError(f"{flag}: {', '.join(repr(n) for n in unknown)} not registered in this sft-hub "
                          f"(registered: {', '.join(sorted(known))}){hints}")
    out = []
    for spec in specs:
        try:
            out.append((spec, strategies.parse_strategy(strategy_mapping(spec))))
        except ConfigError as exc:
            raise ConfigError(f"{flag}: {spec!r}: {exc}") from None
    return out


def parse_learning_rates(raw: str | None, flag: str = "--lr") -> dict[str, float]:
    """`full=5e-5,head=5e-3` -> {strategy name (or label): learning rate}."""
    out: dict[str, float] = {}
    for item in split_list(raw, flag) if raw else []:
        key, _, text = item.rpartition("=")
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not key or value <= 0:
            raise ConfigError(f"{flag}: expected STRATEGY=LR with a positive LR, e.g. full=5e-5; got {item!r}")
        out[key] = value
    return out


def label(strategy: Any) -> str:
    """A short, stable name for a strategy with its options: `lora`, `partial:n=2`, `lora:r=16:alpha=32`."""
    options = {k: v for k, v in strategy.to_dict().items() if k != "name"}
    return ":".join([strategy.name, *(f"{k}={v}" for k, v in options.items())])


def slug(text: str) -> str:
    """A folder-name-safe form of a model name or strategy label."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-") or "x"


@dataclass(frozen=True)
class Budget:
    kind: str  # "steps" | "seconds" | "epochs"
    value: float

    def __str__(self) -> str:
        return {"steps": f"{int(self.value)} steps", "epochs": f"{self.value:g} epochs"}.get(self.kind, f"{self.value:g} s")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}

    def training_overrides(self) -> dict[str, Any]:
        """What the budget sets in a candidate's `training:` (a time budget uses the callback instead)."""
        if self.kind == "steps":
            return {"max_steps": int(self.value)}
        if self.kind == "epochs":
            return {"num_train_epochs": self.value, "max_steps": -1}
        return {}

    def callbacks(self) -> list[TrainerCallback]:
        return [TimeBudget(self.value)] if self.kind == "seconds" else []


def parse_budget(raw: str, flag: str = "--budget") -> Budget:
    m = _BUDGET.match(raw or "")
    if not m:
        raise ConfigError(f"{flag}: expected steps, epochs or a time, e.g. 200steps, 1epoch, 5min, 90s; got {raw!r}")
    value, unit = float(m.group(1)), m.group(2)
    if value <= 0:
        raise ConfigError(f"{flag}: must be positive, got {raw!r}")
    if unit.startswith("step"):
        if not value.is_integer():
            raise ConfigError(f"{flag}: a whole number of steps, got {raw!r}")
        return Budget("steps", value)
    if unit.startswith("epoch"):
        return Budget("epochs", value)
    return Budget("seconds", value * {"min": 60, "m": 60, "h": 3600}.get(unit, 1))


class TimeBudget(TrainerCallback):
    """Stops training once `seconds` of training wall time have passed (the model is then evaluated and saved).

    Under `accelerate launch` every rank must stop on the same step, so rank 0's clock decides and its
    decision is broadcast each step.
    """

    def __init__(self, seconds: float):
        self.seconds, self.start, self.stopped_at = seconds, 0.0, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        decision = [time.monotonic() - self.start >= self.seconds]
        if args.world_size > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(decision)
        if decision[0]:
            self.stopped_at = state.global_step
            control.should_training_stop = True
