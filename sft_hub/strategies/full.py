"""`full`: every parameter the task leaves trainable trains; the whole model is saved (`<run>/model`).

Options (train_top.py): `layer_decay` and `head_lr` (discriminative learning rates), `unfreeze_after`
(the head alone first). Without them the Trainer's own optimizer groups are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from sft_hub.strategies import register
from sft_hub.strategies.base import WHOLE_MODEL, ModelInfo, keep_frozen_batchnorm_in_eval, options_of, saved_folder
from sft_hub.strategies.train_top import TopTraining, TrainTop


@register
class Full(TopTraining):
    @dataclass
    class Config(TrainTop):
        pass

    name: ClassVar[str] = "full"
    saved_as: ClassVar[str] = WHOLE_MODEL
    merges: ClassVar[bool] = True  # nothing to fold: the saved model already stands alone
    needs_training_loop: ClassVar[bool] = True

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or self.Config()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **options_of(self.config)}

    def apply(self, model: nn.Module, info: ModelInfo) -> nn.Module:
        self.info = info
        keep_frozen_batchnorm_in_eval(model)  # BN a task froze; BN held by unfreeze_after until it thaws
        return model  # everything the task left trainable (a task may freeze e.g. an audio feature encoder)

    def save(self, model: nn.Module, folder: Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        target = Path(folder) / self.saved_as
        target.mkdir(parents=True, exist_ok=True)
        kwargs = {"state_dict": state_dict} if state_dict is not None else {}
        model.save_pretrained(target, safe_serialization=True, **kwargs)
        return target

    def load(self, base: nn.Module, folder: Path) -> nn.Module:
        """`base` is already the saved model (a run's `model/` folder is what `Run.load_model` builds from)."""
        saved_folder(self, folder)
        return base
