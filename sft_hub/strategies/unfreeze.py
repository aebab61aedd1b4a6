"""Gradual unfreezing (`unfreeze_after`): only the head trains for the first K epochs or steps, then the rest.

The option is a mapping with one unit: `unfreeze_after: {epochs: 1}` (head only for the whole first epoch) or
`unfreeze_after: {steps: 500}` (head only for optimizer steps 1..500). The strategy's optimizer groups are built
up front, with every parameter that will ever train (param_groups.build_groups(include=...)); until the boundary
`GradualUnfreeze` holds the later ones at requires_grad=False, so they get no gradient, no Adam moments and no
weight decay. The switch depends only on the Trainer's restored state (global_step, epoch), so a run killed
after the unfreeze point resumes with the same optimizer groups and state and continues bit for bit.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import TrainerCallback

from sft_hub.errors import ConfigError

UNITS = ("epochs", "steps")


def check_unfreeze_after(value: dict[str, int] | None, where: str) -> None:
    if value is None:
        return
    keys = sorted(value)
    if len(keys) != 1 or keys[0] not in UNITS:
        raise ConfigError(f"{where}.unfreeze_after: give one of {{epochs: K}} or {{steps: K}}, got {value!r}")
    count = value[keys[0]]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"{where}.unfreeze_after.{keys[0]}: must be a positive whole number, got {count!r}")


class GradualUnfreeze(TrainerCallback):
    """Keeps `later` parameters frozen until `after` ({"epochs": K} or {"steps": K}) is reached."""

    def __init__(self, later: list[nn.Parameter], after: dict[str, int]):
        self.later, self.after = later, after
        self.thawed: bool | None = None

    def due(self, state: Any) -> bool:
        if "steps" in self.after:
            return state.global_step >= self.after["steps"]  # steps done; the next one is step global_step + 1
        return int(state.epoch or 0) >= self.after["epochs"]  # whole epochs done (exact at an epoch's last step)

    def update(self, state: Any) -> None:
        thawed = self.due(state)
        if thawed != self.thawed:
            for param in self.later:
                param.requires_grad_(thawed)
            self.thawed = thawed

    def on_train_begin(self, args, state, control, **kwargs):
        self.update(state)  # a resumed run starts on the right side of the boundary

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.update(state)

    def on_step_begin(self, args, state, control, **kwargs):
        self.update(state)

    def on_train_end(self, args, state, control, **kwargs):
        for param in self.later:  # what the strategy trains, whether or not training reached the boundary
            param.requires_grad_(True)
        self.thawed = None
