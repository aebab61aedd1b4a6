"""`full`: every parameter the task leaves trainable trains; the whole model is saved (`<run>/model`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from sft_hub.strategies import register
from sft_hub.strategies.base import WHOLE_MODEL, ModelInfo, options_of, saved_folder


@register
class Full:
    @dataclass
    class Config:
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
        return model  # everything the task left trainable (a task may freeze e.g. an audio feature encoder)

    def param_groups(self, model: nn.Module, lr: float) -> list[dict] | None:
        return None

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
