"""The options `full` and `partial` share, and what they do: discriminative learning rates and gradual unfreezing.

`TrainTop` is the options dataclass (`layer_decay`, `head_lr`, `unfreeze_after`); `TopTraining` gives a strategy
whose Config extends it its `param_groups` (param_groups.py) and `callbacks` (unfreeze.py). Its one piece of
state is the ModelInfo of the model it was applied to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from sft_hub.model_info import ModelInfo
from sft_hub.strategies.param_groups import build_groups, check_rates, is_head
from sft_hub.strategies.unfreeze import GradualUnfreeze, check_unfreeze_after


@dataclass
class TrainTop:
    """The options `full` and `partial` share: discriminative learning rates and gradual unfreezing."""

    layer_decay: float | None = None  # lr x layer_decay^depth (head 0, top block 1, embeddings L+1)
    head_lr: float | None = None  # the new head's learning rate (default: training.learning_rate)
    unfreeze_after: dict[str, int] | None = None  # {epochs: K} or {steps: K}: head only until then

    def validate(self, where: str) -> None:
        check_rates(self.layer_decay, self.head_lr, where)
        check_unfreeze_after(self.unfreeze_after, where)


class TopTraining:
    """param_groups / callbacks for a strategy whose Config is a TrainTop (state: the applied model's info)."""

    info: ModelInfo | None = None
    config: Any

    def later(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """Parameters held frozen until `unfreeze_after` (everything trained but the head)."""
        if self.config.unfreeze_after is None or self.info is None:
            return []
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad and not is_head(n, self.info)]

    def param_groups(self, model: nn.Module, lr: float) -> list[dict] | None:
        c = self.config
        if self.info is None or (c.layer_decay is None and c.head_lr is None and c.unfreeze_after is None):
            return None  # the Trainer's own groups
        return build_groups(model, self.info, lr, c.layer_decay, c.head_lr, include={n for n, _ in self.later(model)})

    def callbacks(self, model: nn.Module, resume_from: Path | None = None) -> list:
        later = [p for _, p in self.later(model)]
        return [GradualUnfreeze(later, self.config.unfreeze_after)] if later else []
